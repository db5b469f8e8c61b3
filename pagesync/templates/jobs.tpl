<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{{csrf}}">
<title>pagesync jobs</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/jobs/static/jobs.css">
<script src="/jobs/static/jobs.js" defer></script>
</head>
<body>
<header>
  <h1>pagesync jobs</h1>
  <span id="status" class="status">connecting…</span>
  <span class="user">signed in as {{user}}</span>
</header>
<main>
<p id="queue-alert" class="alert" role="alert" hidden></p>
<section class="totals" aria-label="Totals">
  <div class="stat" title="Processed: job attempts that succeeded, since the database was created (counter jobs_done)">
    <span class="label">Processed</span><span class="value" id="t-processed">–</span></div>
  <div class="stat failed" title="Failed: job attempts that raised an error, whether retried or not (counters jobs_retrying + jobs_failed)">
    <span class="label">Failed</span><span class="value" id="t-failed">–</span></div>
  <div class="stat" title="Enqueued: jobs waiting for a worker (job state pending or queued)">
    <span class="label">Enqueued</span><span class="value" id="t-enqueued">–</span></div>
  <div class="stat" title="Retrying: jobs that failed and wait for a retry with backoff (job state retrying)">
    <span class="label">Retrying</span><span class="value" id="t-retrying">–</span></div>
  <div class="stat dead" title="Dead: jobs past their retries, in the failed list below (job state failed)">
    <span class="label">Dead</span><span class="value" id="t-dead">–</span></div>
  <div class="stat" title="Queue depth: messages in the queue backend itself ({{queue}})">
    <span class="label">Queue depth</span><span class="value" id="t-depth">–</span></div>
  <div class="stat" title="Awaiting delivery: jobs stored with their records but not yet in the queue (job state pending); the worker's reconciler delivers them">
    <span class="label">Awaiting delivery</span><span class="value" id="t-pending">–</span></div>
</section>

<section aria-label="Throughput">
  <h2>Throughput <span class="hint" id="rate"></span></h2>
  <svg id="chart" viewBox="0 0 600 120" preserveAspectRatio="none" role="img"
       aria-label="Jobs finished per second, last 60 seconds"></svg>
  <p class="hint" id="chart-scale"></p>
</section>

<div class="columns">
<section aria-label="Jobs by task">
  <h2>Jobs by task</h2>
  <table id="tasks">
    <thead><tr><th>task</th><th title="pending or queued">queued</th><th>running</th>
      <th>retrying</th><th>done</th><th title="dead">failed</th></tr></thead>
    <tbody></tbody>
  </table>
</section>
<section aria-label="Workers">
  <h2>Workers</h2>
  <table id="workers">
    <thead><tr><th>name</th><th>pid</th><th>threads</th><th>state</th><th>seen</th></tr></thead>
    <tbody></tbody>
  </table>
</section>
</div>

<section aria-label="In flight">
  <h2>In flight</h2>
  <table id="inflight">
    <thead><tr><th>task</th><th>record</th><th>attempt</th><th>age</th><th>worker</th></tr></thead>
    <tbody></tbody>
  </table>
</section>

<section aria-label="Failed jobs">
  <h2>Failed jobs <span class="hint">(dead: past their retries)</span>
    <button type="button" id="retry-all">Retry all</button>
    <button type="button" id="discard-all" class="danger">Discard all</button></h2>
  <p id="action-result" class="hint" role="status"></p>
  <div id="failed"></div>
</section>

<section aria-label="Record lookup">
  <h2>Look up a record</h2>
  <form id="lookup">
    <label for="lookup-id">record id</label>
    <input id="lookup-id" name="id" maxlength="512" placeholder="pv_1732540800000_42" required>
    <button type="submit">Look up</button>
  </form>
  <div id="lookup-result"></div>
</section>
</main>
</body>
</html>
