"""docs/uplink.asyncapi.yaml against gateway/uplink/protocol.py, in both directions (every frame,
field, type and required field), and against the AsyncAPI parser (@asyncapi/parser, npm).

Under CI=true the parser must be installed (.ci/run does it) and the test runs; elsewhere it is
installed on first use into tests/asyncapi_support/node_modules, or skipped without node/npm."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml

from gateway.uplink import protocol as proto

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "uplink.asyncapi.yaml"
SUPPORT = ROOT / "tests" / "asyncapi_support"

SAMPLES: list[proto.Message] = [
    proto.Hello("gw-1", "0011223344556677", ("ed25519:0011223344556677",)),
    proto.Welcome("0011223344556677", 3),
    proto.Events((b"\x80",)),
    proto.Ack("0011223344556677", 3),
    proto.Error(proto.CLOSE_PROTOCOL, "why"),
    proto.Command("c-1", "requestMeters", {"port": "sas0", "address": 1}, {}),
    proto.CommandResult("c-1", "ok", "", {}),
]
# Decoded leniently on purpose (a bad command is answered, never a close: G-CMD-3): the
# document's required list is what a platform must send.
COMMAND_REQUIRED = {"type", "id", "name", "target"}


def doc() -> dict[str, Any]:
    return yaml.safe_load(DOC.read_text())


def wire_name(message: proto.Message) -> str:
    return msgpack.unpackb(proto.encode(message))["type"]


def schema_type(annotation: Any) -> dict[str, Any] | None:
    """The JSON Schema a protocol.py field annotation means; None for Any (checked elsewhere)."""
    if annotation is Any:
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is str:
        return {"type": "string"}
    if annotation is int:
        return {"type": "integer"}
    if origin is tuple and args[1:] == (Ellipsis,):
        item = {"type": "string", "format": "binary"} if args[0] is bytes else schema_type(args[0])
        return {"type": "array", "items": item}
    if origin is dict:
        return {"type": "object"}
    raise AssertionError(f"no schema mapping for {annotation!r}")


def code_required(message: proto.Message) -> set[str]:
    """The keys decode() refuses to do without."""
    body = msgpack.unpackb(proto.encode(message))
    required = {"type"}
    for key in body:
        if key == "type":
            continue
        try:
            proto.decode(msgpack.packb({k: v for k, v in body.items() if k != key},
                                       use_bin_type=True))
        except proto.ProtocolViolation:
            required.add(key)
    return required


def test_every_frame_of_the_code_is_documented_and_nothing_else() -> None:
    code = {wire_name(m) for m in SAMPLES}
    assert {type(m) for m in SAMPLES} == set(typing.get_args(proto.Message))
    d = doc()
    assert set(d["components"]["messages"]) == code
    assert set(d["components"]["schemas"]) == code
    assert set(d["channels"]["stream"]["messages"]) == code


@pytest.mark.parametrize("message", SAMPLES, ids=wire_name)
def test_fields_types_and_required_match(message: proto.Message) -> None:
    name = wire_name(message)
    schema = doc()["components"]["schemas"][name]
    hints = typing.get_type_hints(type(message))
    fields = {f.name for f in dataclasses.fields(message)}
    wire = set(msgpack.unpackb(proto.encode(message)))
    assert wire == fields | {"type"}  # the dataclass is the frame
    assert set(schema["properties"]) == wire, name
    assert schema["properties"]["type"] == {"const": name}
    for field in fields:
        expected = schema_type(hints[field])
        documented = schema["properties"][field]
        if expected is None:
            assert documented, f"{name}.{field} undocumented"
            continue
        for key, value in expected.items():
            if key == "items":
                assert {k: documented["items"][k] for k in value} == value, f"{name}.{field}"
            else:
                assert documented.get(key) == value, f"{name}.{field}: {key}"
    required = COMMAND_REQUIRED if name == "command" else code_required(message)
    assert set(schema["required"]) == required, name


def test_documented_constants_are_the_codes() -> None:
    schemas = doc()["components"]["schemas"]
    assert schemas["hello"]["properties"]["proto"]["const"] == proto.PROTO
    assert set(schemas["command_result"]["properties"]["result"]["enum"]) == \
        proto.COMMAND_RESULTS


def _parser_ready() -> bool:
    return (SUPPORT / "node_modules" / "@asyncapi" / "parser").is_dir()


def test_the_document_is_valid_asyncapi_3() -> None:
    assert doc()["asyncapi"] == "3.0.0"
    ci = os.environ.get("CI") == "true"
    node, npm = shutil.which("node"), shutil.which("npm")
    if not _parser_ready():
        if ci:
            pytest.fail("CI: @asyncapi/parser is not installed (.ci/run runs npm ci in "
                        "tests/asyncapi_support)")
        if not (node and npm):
            pytest.skip("node/npm not available to run @asyncapi/parser")
        installed = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                                   cwd=SUPPORT, capture_output=True, text=True, timeout=300)
        if installed.returncode != 0:
            pytest.skip(f"could not install @asyncapi/parser: {installed.stderr[-300:]}")
    assert node, "node is needed to run @asyncapi/parser"
    run = subprocess.run([node, "validate.mjs", str(DOC)], cwd=SUPPORT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "valid AsyncAPI 3.0.0" in run.stderr
