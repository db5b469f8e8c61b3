"""CLI output shows user data literally: names, hosts, worker names and errors holding "[...]"
are not read as Rich markup."""
import json
import time

from pagesync import store

from .test_cli_errors import run

WIDE = {"COLUMNS": "200"}


def cli(*args):
    return run(*args, env=WIDE)


def test_token_commands_show_bracketed_names_literally(tmp_path):
    db = str(tmp_path / "p.db")
    for name in ("[/]", "[red]mallory"):
        res = cli("token", "create", name, "--db", db)
        assert res.returncode == 0, res.stderr
        assert f"Token for {name} (shown once" in res.stderr
        assert res.stdout.startswith("psk_")
    listed = cli("token", "list", "--db", db)
    assert listed.returncode == 0, listed.stderr
    assert "[/]" in listed.stdout and "[red]mallory" in listed.stdout
    assert "last sync" in listed.stdout and listed.stdout.count("never") == 2
    revoked = cli("token", "revoke", "[/]", "--db", db)
    assert revoked.returncode == 0, revoked.stderr
    assert "Revoked 1 token(s) of [/]." in revoked.stdout
    again = cli("token", "revoke", "[/]", "--db", db)
    assert again.returncode == 1 and "no active token for '[/]'" in again.stderr


def bracketed_database(path) -> str:
    """A database whose user, host, worker, record ids and job error all hold markup."""
    db = str(path / "p.db")
    store.init_db(db)
    conn = store.connect(db)
    store.create_token(conn, "[red]mallory")
    uid = store.user_id_by_name(conn, "[red]mallory")
    now = time.time()
    conn.execute("INSERT INTO rollups VALUES (?, '2024-05-01', '[bold red]x.com', '[bold red]x.com', "
                 "3, 100, 50, 20)", (uid,))
    conn.execute("INSERT INTO workers VALUES ('[/]w1', 1, 'h', ?, ?, 2, 'thread', 'sqlite', 'alive')",
                 (now, now))
    conn.execute("INSERT INTO jobs (task, user_id, record_id, revision, state, attempts, finished_at, "
                 "error, worker) VALUES (?, ?, '[/]r1', 1, 'failed', 3, ?, 'boom [/] [red]x', '[/]w1'), "
                 "(?, ?, '[red]r2', 1, 'running', 1, ?, NULL, '[/]w1')",
                 (store.TASK_VISIT, uid, now, store.TASK_VISIT, uid, now))
    return db


def test_stats_watch_and_failed_jobs_show_bracketed_data_literally(tmp_path):
    db = bracketed_database(tmp_path)
    res = cli("stats", "--db", db, "--date", "2024-05-01", "--user", "[red]mallory")
    assert res.returncode == 0, res.stderr
    assert "[bold red]x.com" in res.stdout and "2024-05-01 (UTC), [red]mallory" in res.stdout
    res = cli("watch", "--once", "--db", db)
    assert res.returncode == 0, res.stderr
    for text in ("[/]w1", "[red]r2", "[/]r1", "boom [/] [red]x"):
        assert text in res.stdout, text
    res = cli("jobs", "failed", "--db", db)
    assert res.returncode == 0, res.stderr
    assert "[/]r1" in res.stdout and "boom [/] [red]x" in res.stdout
    res = cli("stats", "--db", db, "--user", "[/]nobody")
    assert res.returncode == 1 and "no user '[/]nobody'" in res.stderr


def help_text(*command) -> str:
    res = cli(*command, "--help")
    assert res.returncode == 0, res.stderr
    return res.stdout


def usage(*command) -> str:
    return next(line for line in help_text(*command).splitlines() if "Usage:" in line)


def test_help_shows_bracketed_parts_and_plain_metavars():
    serve = help_text("serve")
    assert "[env: PAGESYNC_DB; default pagesync.db]" in serve
    assert "[env: PAGESYNC_QUEUE]" in serve
    dev = next(line for line in serve.splitlines() if "--dev" in line)
    assert "<bool>" not in dev
    assert "<str>" not in serve and "<int" not in serve and "TEXT" in serve  # typer 0.27 metavars
    assert "{" not in usage("replay") and "{" not in usage("token", "create")
    assert "FILES" in usage("replay") and "files" not in usage("replay")
    assert "NAME" in usage("token", "create")
    assert "IDS" in usage("jobs", "retry")


def test_piped_output_keeps_long_values_whole(tmp_path):
    """Without a terminal (a pipe, a file) and without COLUMNS, tables are not squeezed to
    80 columns: a long record id and error come out whole, ready for grep."""
    db = bracketed_database(tmp_path)
    long_id = "pv_1764547200000_" + "7" * 40
    conn = store.connect(db)
    conn.execute("UPDATE jobs SET record_id = ? WHERE state = 'failed'", (long_id,))
    conn.commit()
    for command in (("jobs", "failed"), ("watch", "--once")):
        res = run(*command, "--db", db, env={"COLUMNS": ""})  # as if COLUMNS were unset
        assert res.returncode == 0, res.stderr
        assert long_id in res.stdout, (command, res.stdout)


ESC_ID = "esc\x1b]0;PWNED\x07\x1b[2J\x1b[31mred\x00\u202ex"


def test_control_characters_in_client_data_are_shown_as_escapes(tmp_path):
    """A record id, error or host a client sent cannot retitle, clear or recolour the
    operator's terminal: watch, jobs failed and stats show its control characters as
    escapes; --json keeps them as sent (JSON escapes them)."""
    db = str(tmp_path / "p.db")
    store.init_db(db)
    conn = store.connect(db)
    store.create_token(conn, "alice")
    now = time.time()
    conn.execute("INSERT INTO rollups VALUES (1, '2024-05-01', ?, ?, 3, 100, 50, 20)",
                 ("x\x1b[2J.com", "x\x1b[2J.com"))
    conn.execute("INSERT INTO jobs (task, user_id, record_id, revision, state, attempts, finished_at, "
                 "error) VALUES (?, 1, ?, 1, 'failed', 3, ?, ?)",
                 (store.TASK_VISIT, ESC_ID, now, "boom \x1b[31m" + ESC_ID))
    for args in (("watch", "--once"), ("jobs", "failed"), ("stats", "--date", "2024-05-01")):
        res = cli(*args, "--db", db)
        assert res.returncode == 0, res.stderr
        assert "\x1b]" not in res.stdout and "\x1b[2J" not in res.stdout and "\x00" not in res.stdout
        assert "\u202e" not in res.stdout
    assert "esc\\x1b]0;PWNED\\x07\\x1b[2J" in cli("jobs", "failed", "--db", db).stdout
    assert "x\\x1b[2J.com" in cli("stats", "--db", db, "--date", "2024-05-01").stdout
    as_json = cli("jobs", "failed", "--db", db, "--json")
    assert json.loads(as_json.stdout)[0]["record_id"] == ESC_ID


def test_log_lines_show_control_characters_as_escapes(caplog):
    import logging

    from pagesync.cli import PrintableLog
    record = logging.LogRecord("pagesync.jobs", logging.WARNING, __file__, 1,
                               "%s failed: %s", (ESC_ID, "line one\nline two"), None)
    assert PrintableLog().filter(record)
    message = record.getMessage()
    assert "\x1b" not in message and "\\x1b]0;PWNED" in message
    assert "line one\nline two" in message  # newlines and tabs of our own lines stay
