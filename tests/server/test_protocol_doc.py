"""docs/protocol.md is the contract (issue 14, item 6): its tables of messages (section 2), errors (section 6) and
goodbye reasons with close codes (section 7), and its option table (section 0), must name exactly what
server/protocol.py, server/config.py and frontend/protocol.js define, so the three cannot drift apart. What it
quotes and promises holds too (issue 25, item 6): parameter values, the causes of `bad_frame_header`, metrics from
the start."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from sdxs.params import GenerationParams
from server.config import ServerConfig
from server.messages import MODELS
from server.protocol import (
    ACCEPT,
    ACCEPTS,
    CLOSE_CODE_FOR,
    FATAL,
    FEATURES,
    IGNORE,
    VIOLATIONS,
    ClientMessage,
    ErrorCode,
    GoodbyeReason,
    ImageFormat,
    ProtocolError,
    ServerMessage,
    SessionState,
    admit,
    pack_input,
    unpack_input,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "protocol.md").read_text()
JS = (ROOT / "frontend" / "protocol.js").read_text()
TRANSPORT_CLOSE_CODES = {1006, 1009}  # no close frame at all; a message cut by the transport (section 6)


def section(number: int) -> str:
    match = re.search(rf"^## {number}\. .*?(?=^## \d+\. |\Z)", DOC, re.M | re.S)
    assert match, f"docs/protocol.md has no section {number}"
    return match.group(0)


def table(text: str, after: str | None = None) -> list[list[str]]:
    """The rows (cells, stripped) of the first Markdown table in `text` (after the line containing `after`)."""
    if after is not None:
        text = text[text.index(after):]
    rows = []
    for line in text[text.index("\n|"):].splitlines()[1:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows[2:]  # without the header and the |---| line


def names(cell: str) -> list[str]:
    """The `code`-quoted names in a cell."""
    return re.findall(r"`([^`]+)`", cell)


def js_object(name: str) -> dict[str, str]:
    """`export const NAME = Object.freeze({ KEY: "value", ... })` of frontend/protocol.js as a dict."""
    match = re.search(rf"export const {name} = Object\.freeze\(\{{(.*?)\}}\);", JS, re.S)
    assert match, f"frontend/protocol.js exports no {name}"
    pairs = re.findall(r'^\s*"?([\w]+)"?\s*:\s*("?)([^",{}]+)\2', match.group(1), re.M)
    return {key: value.strip() for key, _, value in pairs}


def test_client_messages_agree():
    documented = [names(row[0])[0] for row in table(section(2), "### Client -> server, text")]
    assert set(documented) == {m.value for m in ClientMessage} == set(js_object("ClientMsg").values())
    assert set(MODELS) == set(ClientMessage)  # every type has its field model (server/messages.py)


def test_server_messages_agree():
    documented = [names(row[0])[0] for row in table(section(2), "### Server -> client, text")]
    assert set(documented) == {m.value for m in ServerMessage} == set(js_object("Msg").values())


def test_error_codes_fatality_and_violations_agree():
    rows = table(section(6))
    documented = {names(code)[0]: (fatal, violation, meaning) for code, fatal, violation, meaning in rows}
    assert set(documented) == {c.value for c in ErrorCode} == set(js_object("ErrorCode").values())
    for code, (fatal, violation, meaning) in documented.items():
        assert (fatal == "yes") == (ErrorCode(code) in FATAL), code
        assert (violation == "yes") == (ErrorCode(code) in VIOLATIONS), code
        if fatal == "yes":  # "(close NNNN)": the code of the goodbye that follows
            closes = re.findall(r"close (\d{4})", meaning)
            assert closes == [str(int(CLOSE_CODE_FOR[FATAL[ErrorCode(code)]]))], code


def test_goodbye_reasons_and_close_codes_agree():
    documented = {}
    for reasons, close_code, _ in table(section(7)):
        for reason in names(reasons):
            documented[reason] = int(close_code)
    assert documented == {r.value: int(c) for r, c in CLOSE_CODE_FOR.items()}
    assert set(documented) == {r.value for r in GoodbyeReason}
    assert {k: int(v) for k, v in js_object("GoodbyeClose").items()} == documented
    js_close_codes = {int(code) for code in re.findall(r"^\s*(\d{4}): \{", JS, re.M)}
    assert js_close_codes == set(documented.values()) | TRANSPORT_CLOSE_CODES  # the page's reactions, by close code


def test_quiet_errors_are_error_codes():
    quiet = re.search(r"QUIET_ERRORS = new Set\(\[(.*?)\]\)", JS, re.S).group(1)
    used = re.findall(r"ErrorCode\.(\w+)", quiet)
    assert used and {js_object("ErrorCode")[name] for name in used} <= {c.value for c in ErrorCode}


def test_option_table_mirrors_server_config():
    rows = {names(flag)[0]: meaning for flag, _, _, meaning in table(section(0))}
    expected = {"--" + name.replace("_", "-"): field.description for name, field in ServerConfig.model_fields.items()}
    assert set(rows) == set(expected)
    for flag, meaning in rows.items():
        assert meaning == expected[flag].replace("'", "`") or meaning == expected[flag], flag


def test_limits_object_lists_every_limit():
    block = re.search(r"`limits` object \(all numbers\):\s*```json\n(.*?)```", DOC, re.S).group(1)
    documented = json.loads(block)
    assert set(documented) == set(ServerConfig().limits(512))


@pytest.mark.parametrize("code", sorted(c.value for c in ErrorCode))
def test_every_error_code_is_explained_in_the_doc_once(code):
    assert len(re.findall(rf"^\| `{code}` \|", section(6), re.M)) == 1


# --- issue 25, item 6: what the doc promises holds --------------------------------------------------------------

# A parameter as the doc quotes it: `seed: 3` (in backticks) or "seed":3 (in a JSON example).
QUOTED_PARAM = re.compile(r'`"?(\w+)"?\s*:\s*([^`]+?)`|"(\w+)"\s*:\s*("(?:[^"\\]|\\.)*"|[-\w.]+)')


def test_every_parameter_value_the_doc_quotes_is_one_the_schema_accepts():
    fields = set(GenerationParams.model_fields)
    quoted = []
    for match in QUOTED_PARAM.finditer(DOC):
        name, value = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        if name in fields:
            quoted.append((name, value))
    assert len(quoted) >= 3, quoted  # the JSON examples quote prompt, mode and strength at least
    for name, value in quoted:
        try:
            GenerationParams.model_validate({name: json.loads(value)})
        except (ValueError, ValidationError) as err:
            pytest.fail(f"docs/protocol.md quotes {name}: {value}, which the server refuses: {err}")


REFUSED_HEADERS = [  # (a binary message, the words of section 6's bad_frame_header row that name its fault)
    (b"SX\x01", "shorter than 16 bytes"),
    (b"XX" + bytes(14), "wrong magic"),
    (b"SX\x02\x01" + bytes(12), "version"),
    (b"SX\x01\x09" + bytes(12), "unknown format byte"),
    (pack_input(1, 0.0, ImageFormat.NONE, b"\xff\xd8 bytes"), "format 0 (no image) with a payload"),
]


@pytest.mark.parametrize(("message", "words"), REFUSED_HEADERS, ids=[w for _, w in REFUSED_HEADERS])
def test_every_refused_frame_header_is_listed_under_bad_frame_header(message, words):
    with pytest.raises(ProtocolError) as refused:
        unpack_input(message)
    assert refused.value.code is ErrorCode.BAD_FRAME_HEADER
    row = next(meaning for code, _, _, meaning in table(section(6)) if code == "`bad_frame_header`")
    assert words in row, f"section 6 does not list this cause of bad_frame_header: {words}"


def test_metrics_list_every_session_state_and_frame_result_at_0_before_the_first_session(tmp_path):
    from starlette.testclient import TestClient

    from server.routes import create_app

    app = create_app(ServerConfig(model=str(tmp_path), gradio=False))  # no lifespan: nothing loads, nobody came
    text = TestClient(app).get("/metrics").text
    for state in ("active", "queued"):
        assert f'sdxs_sessions{{state="{state}"}} 0.0' in text, f"sdxs_sessions{{state={state!r}}} is missing"
    for result in ("generated", "reused", "skipped", "error", "dropped"):
        assert f'sdxs_frames_total{{result="{result}"}} 0.0' in text, f"sdxs_frames_total{{{result}}} is missing"


def _code(js: str) -> str:
    """JavaScript without its comments (the words of a comment may name codes)."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", js, flags=re.S)


def test_protocol_code_strings_live_in_frontend_protocol_js_only():
    """Error codes, goodbye reasons and feature names are spelt in frontend/protocol.js alone; every other module
    uses its exports (ErrorCode.X, Reason.X, Feature.X), so a renamed code cannot leave a stale copy behind."""
    codes = {c.value for c in ErrorCode} | {r.value for r in GoodbyeReason} | set(FEATURES)
    codes |= set(js_object("Reason").values())
    found = []
    for path in sorted((ROOT / "frontend").glob("*.js")):
        if path.name == "protocol.js":
            continue
        for literal in re.findall(r"""["'`]([a-z_]+)["'`]""", _code(path.read_text())):
            if literal in codes:
                found.append(f"{path.name}: {literal!r}")
    assert not found, found
    assert set(js_object("Reason").values()) >= {r.value for r in GoodbyeReason}
    assert set(js_object("Feature").values()) == set(FEATURES)


def test_the_state_table_is_the_one_in_section_4():
    """server/protocol.py's ACCEPTS is section 4's table: what each state accepts, ignores, and answers with which
    error, checked once before dispatch."""
    rows = {names(row[0])[0]: row[1] for row in table(section(4), "| state | the server accepts |")}
    for state, cell in rows.items():
        verdicts = ACCEPTS[SessionState(state)]
        accepted = {kind for kind, verdict in verdicts.items() if verdict == ACCEPT}
        if cell.startswith("everything"):
            assert accepted == {k for k in verdicts if k != ClientMessage.HELLO}, state
        elif cell.startswith("nothing"):
            assert not accepted, state
        else:
            listed = set(names(cell.split(";")[0]))
            assert accepted == listed, (state, accepted, listed)
            for code in {v for v in verdicts.values() if isinstance(v, ErrorCode) and v != ErrorCode.BAD_MESSAGE}:
                assert f"`{code.value}`" in cell, (state, code)
            for kind in (k for k, v in verdicts.items() if v == IGNORE):
                assert f"`{kind}` is ignored" in cell, (state, kind)
    with pytest.raises(ProtocolError) as err:
        admit(SessionState.ACTIVE, ClientMessage.HELLO)
    assert err.value.code is ErrorCode.BAD_MESSAGE and "expected" in err.value.message
