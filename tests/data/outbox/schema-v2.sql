-- The outbox layout of commit 691b00a (schema version 2; its meta said schema = "1"),
-- copied verbatim from gateway/outbox.py at that commit: tests/gateway/test_outbox_migrations.py
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    channel TEXT NOT NULL,
    machine TEXT,
    captured_at REAL NOT NULL,
    source_code INTEGER,
    hash BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS machine_state (
    machine TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    last_code INTEGER,
    last_payload BLOB,
    acked_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    seq INTEGER,
    type TEXT,
    channel TEXT,
    machine TEXT,
    captured_at REAL,
    source_code INTEGER,
    hash BLOB,
    body BLOB,
    reason TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
