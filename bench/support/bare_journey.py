"""The journeys benchmark's baseline: message, durable sleep, message, with no crmflow code.

In a module of its own (not the benchmark's `__main__`, which the workflow sandbox refuses),
importing nothing from crmflow: only `temporalio` and `sqlite3`.

`BareJourneyWorkflow` runs an activity, sleeps (a durable timer), runs the activity again.
`BareSender.send` is that activity, the floor of "send one message" on SQLite: in one
transaction it reads the customer's name, e-mail and consent, renders a subject and a body
with `str.format`, and inserts the message into a `messages` table (unique dedupe key per
workflow and step, `INSERT OR IGNORE`, so a retried activity writes once), then commits.
One connection per activity thread, opened with the pragmas crmflow's engine uses (WAL,
synchronous=NORMAL, foreign keys, a 30 s busy timeout).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    customer_id TEXT PRIMARY KEY,
    name TEXT,
    email TEXT,
    consent TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key TEXT NOT NULL UNIQUE,
    customer_id TEXT NOT NULL REFERENCES customers (customer_id),
    address TEXT,
    subject TEXT,
    body TEXT,
    sent_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_messages_customer ON messages (customer_id);
"""

SUBJECTS = {"first": "Hello {name}", "second": "Again"}
BODIES = {
    "first": "Hi {name}. https://example.com/u/{customer_id}",
    "second": "We are still here, {name}.",
}


@dataclass
class SendRequest:
    workflow_id: str
    customer_id: str
    step: str


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def create(path: str, customers: list[tuple[str, str, str]]) -> None:
    """The schema and the customers (id, name, e-mail), all with e-mail consent."""
    conn = connect(path)
    try:
        conn.executescript(SCHEMA)
        conn.executemany(
            "INSERT INTO customers (customer_id, name, email, consent) VALUES (?, ?, ?, ?)",
            [(c, n, e, '{"email": true}') for c, n, e in customers],
        )
        conn.commit()
    finally:
        conn.close()


class BareSender:
    """The activity, bound to one SQLite file; one connection per worker thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.local = threading.local()
        self.opened: list[sqlite3.Connection] = []
        self.lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self.local.conn = conn
            with self.lock:
                self.opened.append(conn)
        return conn

    def close(self) -> None:
        with self.lock:
            for conn in self.opened:
                conn.close()
            self.opened.clear()

    @activity.defn(name="bare_send")
    def send(self, req: SendRequest) -> str:
        conn = self._conn()
        with conn:  # one transaction, committed on leaving
            row = conn.execute(
                "SELECT name, email, consent FROM customers WHERE customer_id = ?",
                (req.customer_id,),
            ).fetchone()
            if row is None or '"email": true' not in row[2]:
                return "suppressed"
            name, email = row[0], row[1]
            conn.execute(
                "INSERT OR IGNORE INTO messages "
                "(dedupe_key, customer_id, address, subject, body, sent_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    f"{req.workflow_id}:{req.step}",
                    req.customer_id,
                    email,
                    SUBJECTS[req.step].format(name=name),
                    BODIES[req.step].format(name=name, customer_id=req.customer_id),
                    datetime.now(UTC).isoformat(sep=" "),
                ),
            )
        return "sent"


RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5))
TIMEOUT = timedelta(minutes=2)


@workflow.defn
class BareJourneyWorkflow:
    """Send, sleep `delay_seconds` (a durable timer), send again."""

    @workflow.run
    async def run(self, customer_id: str, delay_seconds: float) -> int:
        wid = workflow.info().workflow_id
        sent = 0
        for n, step in enumerate(("first", "second")):
            if n:
                await workflow.sleep(timedelta(seconds=delay_seconds))
            status = await workflow.execute_activity(
                "bare_send",
                SendRequest(workflow_id=wid, customer_id=customer_id, step=step),
                result_type=str,
                start_to_close_timeout=TIMEOUT,
                retry_policy=RETRY,
            )
            sent += status == "sent"
        return sent
