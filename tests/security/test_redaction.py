"""Payload redaction: DISPATCHBOX_REDACT's paths masked in CLI output, exports (json, jsonl,
csv) and the HTTP API for every reader not in DISPATCHBOX_PAYLOAD_ROLES."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import psycopg
import pytest

from dispatchbox import publish_many
from dispatchbox.errors import ConfigurationError
from dispatchbox.records import default_actor
from dispatchbox.redaction import MASK, Redaction
from tests.acceptance.test_api import CI_SECRET, SECRET, Server
from tests.conftest import run_cli

CARD = "4111111111111111"
BEARER = "Bearer sk_live_redaction_test"
PATHS = "payload.card.number,headers.authorization,payload.items.sku"
EVENT = {
    "payload": {"card": {"number": CARD, "brand": "visa"}, "items": [{"sku": "A1"}, {"sku": "B2"}]},
    "headers": {"Authorization": BEARER, "trace": "t-1"},
}


def test_paths_are_masked_in_a_copy_and_roles_with_access_see_everything() -> None:
    redaction = Redaction.parse(PATHS, "alice")
    masked = redaction.redact(EVENT, "bob")
    assert masked["payload"] == {
        "card": {"number": MASK, "brand": "visa"},
        "items": [{"sku": MASK}, {"sku": MASK}],
    }
    assert masked["headers"] == {"Authorization": MASK, "trace": "t-1"}, "header names ignore case"
    assert EVENT["payload"]["card"]["number"] == CARD, "the input is never changed"  # type: ignore[index]
    assert redaction.redact(EVENT, "alice") == EVENT
    assert Redaction.parse("", "").redact(EVENT, "bob") == EVENT, "nothing configured"
    # A path that does not exist in an event leaves it alone.
    assert redaction.redact({"payload": [1, "x"], "headers": None}, "bob") == {
        "payload": [1, "x"],
        "headers": None,
    }


@pytest.mark.parametrize("bad", ["card.number", "payload", "payload..x", "body.x"])
def test_a_malformed_path_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="DISPATCHBOX_REDACT"):
        Redaction.parse(bad)


def seed_dead(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        (event_id,) = publish_many(
            conn,
            [
                {
                    "aggregate_type": "order",
                    "aggregate_id": "1",
                    "event_type": "card.charged",
                    "payload": EVENT["payload"],
                    "headers": EVENT["headers"],
                }
            ],
        )
        conn.execute(
            "UPDATE outbox_event SET status = 'dead', dead_at = now(), last_error = 'E: x' "
            "WHERE id = %s",
            [event_id],
        )
    return event_id


def test_cli_list_show_and_exports_are_masked(db_dsn: str, tmp_path: Path) -> None:
    event_id = seed_dead(db_dsn)
    env = {"DISPATCHBOX_REDACT": PATHS, "DISPATCHBOX_PAYLOAD_ROLES": "someone-else"}
    outputs = [
        run_cli("dead-events", "list", "--format", "json", dsn=db_dsn, env=env),
        run_cli("dead-events", "show", str(event_id), dsn=db_dsn, env=env),
        run_cli("dead-events", "show", str(event_id), "--format", "json", dsn=db_dsn, env=env),
    ]
    for fmt in ("json", "jsonl", "csv"):
        outputs.append(
            run_cli("dead-events", "export", "--format", fmt, "--output", "-", dsn=db_dsn, env=env)
        )
    for out in outputs:
        assert out.code == 0, out.stderr
        assert CARD not in out.stdout and "sk_live" not in out.stdout and "A1" not in out.stdout
        assert MASK in out.stdout
    assert json.loads(outputs[0].stdout)[0]["payload"]["card"] == {"number": MASK, "brand": "visa"}
    row = next(csv.DictReader(io.StringIO(outputs[-1].stdout)))
    assert json.loads(row["headers"]) == {"Authorization": MASK, "trace": "t-1"}
    # The OS user running the CLI is its role: listed, it sees the payload as stored.
    env["DISPATCHBOX_PAYLOAD_ROLES"] = default_actor()
    shown = run_cli("dead-events", "export", "--format", "jsonl", "--output", "-", dsn=db_dsn,
                    env=env)  # fmt: skip
    assert json.loads(shown.stdout)["payload"] == EVENT["payload"]


def test_api_masks_for_tokens_without_payload_access(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    event_id = seed_dead(db_dsn)
    monkeypatch.setenv("DISPATCHBOX_REDACT", PATHS)
    monkeypatch.setenv("DISPATCHBOX_PAYLOAD_ROLES", "ops")  # "ci" has no payload access
    server = Server(db_dsn, tmp_path / "serve.log", keep_env=True)
    try:
        as_ci = {"Authorization": f"Bearer {CI_SECRET}"}
        as_ops = {"Authorization": f"Bearer {SECRET}"}
        listed = server.client.get("/api/dead-events", headers=as_ci)
        one = server.client.get(f"/api/dead-events/{event_id}", headers=as_ci)
        for response in (listed, one):
            assert response.status_code == 200
            assert CARD not in response.text and "sk_live" not in response.text
        assert one.json()["headers"]["Authorization"] == MASK
        full = server.client.get(f"/api/dead-events/{event_id}", headers=as_ops)
        assert full.json()["payload"] == EVENT["payload"]
    finally:
        assert server.stop() == 0, server.log()
    assert CARD not in server.log()
