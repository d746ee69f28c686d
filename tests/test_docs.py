"""The documentation stays true: the CLI reference matches the commands, every command has help
with examples, every exit code is explained, local links resolve, and the telemetry examples
validate against the JSON Schemas the agent ships."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from edgekit.cli_docs import has_examples, problems, render, walk

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CLI_MD = DOCS / "cli.md"


def test_every_command_has_help_and_examples() -> None:
    assert problems() == []


def test_walk_reaches_every_command_of_every_area() -> None:
    from edgekit.cli import COMMAND_AREAS

    top = {e.path.split(" ")[1] for e in walk() if e.path != "edgekit"}
    assert top == set(COMMAND_AREAS)


def test_cli_reference_lists_every_command() -> None:
    text = CLI_MD.read_text()
    headings = set(re.findall(r"^## (edgekit.*)$", text, flags=re.M))
    missing = [e.title for e in walk() if e.title not in headings]
    assert not missing, f"docs/cli.md lacks {missing}: run `python -m edgekit.cli_docs > docs/cli.md`"


def test_cli_reference_is_up_to_date() -> None:
    assert CLI_MD.read_text() == render(), "docs/cli.md is out of date: run `python -m edgekit.cli_docs > docs/cli.md`"


def test_generator_check_mode(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text("# old\n")
    run = [sys.executable, "-m", "edgekit.cli_docs", "--check"]
    bad = subprocess.run([*run, str(stale)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "out of date" in bad.stderr
    assert subprocess.run([*run, str(CLI_MD)], capture_output=True, cwd=ROOT).returncode == 0


def test_a_command_without_examples_is_caught() -> None:
    @click.group()
    def root() -> None:
        """Root.

        Examples:
          root sub
        """

    @root.command()
    def sub() -> None:
        """Does things."""

    @root.command()
    def bare() -> None:
        pass

    entries = {e.path: e.command for e in walk(root, "root")}
    assert has_examples(entries["root"]) and not has_examples(entries["root sub"])
    assert not (entries["root bare"].help or "").strip()


# --- exit codes -------------------------------------------------------------------------------

def _error_classes() -> list[type]:
    import edgekit_agent.errors as agent_errors

    import edgekit.errors as central_errors
    from edgekit.rehearsal.agentimage import AgentImageError
    from edgekit.rehearsal.gobuild import GoBuildError
    from edgekit.rehearsal.processes import ServiceError
    from edgekit.rehearsal.realnodes import RealNodesUnavailable

    found: dict[str, type] = {}
    for module in (agent_errors, central_errors):
        for name in dir(module):
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, agent_errors.EdgekitError):
                found[name] = obj
    found.update(ServiceError=ServiceError, GoBuildError=GoBuildError, RealNodesUnavailable=RealNodesUnavailable,
                 AgentImageError=AgentImageError)
    return list(found.values())


def test_troubleshooting_explains_every_exit_code() -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\| (\d+) \|.*$", text, flags=re.M)}
    for cls in _error_classes():
        assert cls.exit_code in rows, f"docs/troubleshooting.md has no row for exit {cls.exit_code} ({cls.__name__})"
        assert f"`{cls.__name__}`" in rows[cls.exit_code], f"exit {cls.exit_code} row does not name {cls.__name__}"


def test_exit_codes_are_distinct_per_error() -> None:
    by_code: dict[int, set[str]] = {}
    for cls in _error_classes():
        by_code.setdefault(cls.exit_code, set()).add(cls.__name__)
    shared = {code: names for code, names in by_code.items() if len(names) > 1}
    # EngineConflictError is a RolloutInProgressError on purpose ("someone else is at work").
    assert shared == {65: {"RolloutInProgressError", "EngineConflictError"}}


# --- links ------------------------------------------------------------------------------------

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        found.add("".join(c for c in title if c.isalnum() or c in " -_").replace(" ", "-"))
    return found


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_local_links_resolve(page: Path) -> None:
    text = page.read_text()
    for target in _LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to missing {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest.read_text()), f"{page.name}: no heading #{anchor} in {dest.name}"


def test_every_docs_page_is_linked_from_the_index_and_readme() -> None:
    index = (DOCS / "README.md").read_text()
    for page in DOCS.glob("*.md"):
        if page.name in ("README.md", "k8s-testenv-corrections.md"):
            continue
        assert f"({page.name})" in index, f"docs/README.md does not link {page.name}"
    readme = (ROOT / "README.md").read_text()
    assert "(docs/README.md)" in readme and "(docs/cli.md)" in readme and "(docs/troubleshooting.md)" in readme


# --- the telemetry contract ---------------------------------------------------------------------

def test_mqtt_examples_validate_against_the_shipped_schemas() -> None:
    import jsonschema
    from edgekit_agent.protocol import load_schema

    text = (DOCS / "mqtt.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    checked = 0
    for section in sections:
        kind = section.split()[0] if section else ""
        if kind not in ("status", "health", "event", "bench"):
            continue
        for block in re.findall(r"```json\n(.*?)```", section, flags=re.S):
            doc = json.loads(block)
            schema = kind if kind != "bench" else ("bench_result" if "state" in doc else "bench_request")
            jsonschema.validate(doc, load_schema(schema))
            checked += 1
    assert checked == 5


def test_mqtt_page_names_every_schema_field_and_event_kind() -> None:
    from edgekit_agent.protocol import EVENT_KINDS, load_schema

    text = (DOCS / "mqtt.md").read_text()
    for kind in ("status", "health", "event"):
        for field in load_schema(kind)["properties"]:
            assert f"`{field}`" in text, f"docs/mqtt.md does not describe {kind}.{field}"
    for event in EVENT_KINDS:
        assert f"`{event}`" in text, f"docs/mqtt.md does not describe the {event} event"


# --- shell completion ---------------------------------------------------------------------------

def test_shell_completion_as_documented() -> None:
    edgekit = str(Path(sys.executable).with_name("edgekit"))
    source = subprocess.run([edgekit], env={"_EDGEKIT_COMPLETE": "bash_source", "PATH": ""},
                            capture_output=True, text=True, timeout=60)
    assert "_edgekit_completion" in source.stdout
    done = subprocess.run([edgekit], env={"_EDGEKIT_COMPLETE": "bash_complete", "COMP_WORDS": "edgekit rollout st",
                                          "COMP_CWORD": "2"}, capture_output=True, text=True, timeout=60)
    assert "plain,status" in done.stdout.splitlines()
    assert "_EDGEKIT_COMPLETE=bash_source edgekit" in (DOCS / "completion.md").read_text()


# --- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("cls_path", "page", "quoted"), [
    ("edgekit_agent.settings:AgentSettings", "agent.md", True),
    ("edgekit.rollout.settings:RolloutSettings", "rollouts.md", True),
    ("edgekit.fleet.settings:FleetSettings", "telemetry.md", False),
])
def test_every_setting_is_documented(cls_path: str, page: str, quoted: bool) -> None:
    import dataclasses
    import importlib

    module, _, name = cls_path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    text = (DOCS / page).read_text()

    def documented(field: str) -> bool:
        return f"`{field}`" in text if quoted else re.search(rf"\b{field}\b", text) is not None

    missing = [f.name for f in dataclasses.fields(cls) if not documented(f.name)]
    assert not missing, f"docs/{page} does not document {name} fields {missing}"


# --- commands quoted in the guides ----------------------------------------------------------------

def _shell_commands(markdown: str) -> list[list[str]]:
    """Every `edgekit ...` invocation in the page's ```sh blocks, as argv (continuations joined,
    comments, redirections and pipes cut off)."""
    import shlex

    found = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if word == "edgekit" and (i == 0 or "=" in words[i - 1] or words[i - 1] in ("&&", ";")):
                    argv = []
                    for w in words[i + 1:]:
                        if w in ("|", "&&", ";", "&", ">", ">>") or w.startswith((">", "|")):
                            break
                        argv.append(w)
                    found.append(argv)
    return found


@pytest.mark.parametrize("page", ["k3s.md"])
def test_edgekit_commands_in_a_guide_use_real_commands_and_flags(page: str) -> None:
    entries: dict[str, list[click.Command]] = {}
    for entry in walk():
        entries.setdefault(entry.path, []).append(entry.command)
    commands = _shell_commands((DOCS / page).read_text())
    assert len(commands) >= 5, f"docs/{page}: found only {commands}"
    for argv in commands:
        words = ["edgekit", *argv]
        depth = max(n for n in range(1, len(words) + 1) if " ".join(words[:n]) in entries)
        path, rest = " ".join(words[:depth]), words[depth:]
        assert not isinstance(entries[path][0], click.Group), f"docs/{page}: `{' '.join(words)}` names a group"
        errors = []
        for command in entries[path]:  # a command with two modes (push) passes if one mode parses it
            try:
                command.make_parser(click.Context(command, info_name=path)).parse_args(list(rest))
                break
            except click.UsageError as exc:
                errors.append(exc.format_message())
        else:
            raise AssertionError(f"docs/{page}: `{' '.join(words)}`: {errors}")
