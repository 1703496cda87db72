"""docker-compose.yml and the Dockerfile name only things that exist (no Docker engine here).

Every ``rd`` command must be a real sub-command of the typer app with options it accepts,
every repository path (build context, Dockerfile, COPY sources, index specs, host volume
paths) must exist, the API's index root must be where the rebuild job's spec writes, and
every healthcheck URL must be a route of the app.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer
import yaml

from conftest import PROJECT

COMPOSE = PROJECT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _argv(cmd) -> list[str]:
    return list(cmd) if isinstance(cmd, list) else shlex.split(cmd)


def _resolve_rd(argv: list[str]) -> tuple[click.Command, list[str]]:
    """Walk ``rd a b ...`` down the click tree; returns the leaf command and its arguments."""
    from retrieval_distill.cli import app

    cmd: click.Command = typer.main.get_command(app)
    args = argv[1:]
    while isinstance(cmd, click.Group):
        assert args, f"{argv}: stops at a command group"
        sub = cmd.get_command(click.Context(cmd), args[0])
        assert sub is not None, f"{argv}: {args[0]!r} is not an rd sub-command (have {cmd.list_commands(click.Context(cmd))})"
        cmd, args = sub, args[1:]
    return cmd, args


def test_services_and_healthchecks(compose):
    services = compose["services"]
    assert {"api", "index-rebuild", "ray-head"} <= set(services)
    assert "scale" in services["ray-head"]["profiles"]  # optional
    for name in ("api", "ray-head"):
        assert services[name]["healthcheck"]["test"], name
    # the API waits for the index job and publishes on loopback only
    assert services["api"]["depends_on"]["index-rebuild"]["condition"] == "service_completed_successfully"
    assert all(str(p).startswith("127.0.0.1:") for p in services["api"]["ports"])
    # the API and the job share the index volume
    vol = lambda s: {v.split(":")[0] for v in services[s]["volumes"]}  # noqa: E731
    assert "indexes" in compose["volumes"] and "indexes" in vol("api") & vol("index-rebuild")


def test_every_rd_command_exists_and_parses(compose):
    seen = 0
    for name, svc in compose["services"].items():
        argv = _argv(svc.get("command", []))
        if not argv or argv[0] != "rd":
            continue
        cmd, args = _resolve_rd(argv)
        # click parses the arguments exactly as at run time (unknown options raise)
        ctx = cmd.make_context(f"rd-{name}", list(args), resilient_parsing=False)
        assert ctx.params is not None
        seen += 1
    assert seen >= 2


def test_ray_head_image_installs_ray(compose):
    """The optional Ray head runs `ray start`: its image must be built with the extra that pins ray."""
    import tomllib

    head = compose["services"]["ray-head"]
    assert _argv(head["command"])[:2] == ["ray", "start"]
    extra = head["build"]["args"]["EXTRAS"].strip("[]")
    deps = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert any(d.startswith("ray") for d in deps[extra]), deps.get(extra)
    assert "ARG EXTRAS" in (PROJECT / head["build"]["dockerfile"]).read_text(encoding="utf-8")


def test_every_repository_path_exists(compose):
    missing = []
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if build:
            ctx = PROJECT / build["context"]
            if not ctx.is_dir():
                missing.append(f"{name}: build context {build['context']}")
            dockerfile = ctx / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                missing.append(f"{name}: Dockerfile {dockerfile}")
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith((".", "/")) and not (PROJECT / src).exists():
                missing.append(f"{name}: volume source {src}")
        for a in _argv(svc.get("command", [])):
            if re.search(r"\.(ya?ml|json|py)$", a) and not (PROJECT / a).is_file():
                missing.append(f"{name}: command file {a}")
    assert not missing, missing


def test_api_serves_what_the_rebuild_job_builds(compose):
    services = compose["services"]
    job = _argv(services["index-rebuild"]["command"])
    spec = yaml.safe_load((PROJECT / job[-1]).read_text(encoding="utf-8"))
    api = _argv(services["api"]["command"])
    assert api[api.index("--index-root") + 1] == spec["root"]
    # the spec's root is inside the mounted volume (container WORKDIR /app)
    mount = next(v.split(":")[1] for v in services["api"]["volumes"] if v.startswith("indexes:"))
    assert ("/app/" + spec["root"]).startswith(mount + "/")


def test_dockerfile_copies_existing_paths_and_checks_a_real_route():
    from services.search_api import ServiceSettings, create_app

    text = (PROJECT / "services/search_api/Dockerfile").read_text(encoding="utf-8")
    sources = []
    for line in text.splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    assert sources and all((PROJECT / s).exists() for s in sources), sources
    routes = {r.path for r in create_app(ServiceSettings(_env_file=None, admin_api_key="k")).routes}
    urls = re.findall(r"http://127\.0\.0\.1:8000(/[\w/]+)", text + COMPOSE.read_text(encoding="utf-8"))
    assert urls and set(urls) <= routes, (urls, routes)
    assert 'CMD ["rd", "serve"]' in text
