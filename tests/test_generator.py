"""rktd-generator end to end: golden fixtures, bad input, dry run, atomic and concurrent writes,
logging, lean imports, the compiled templates, and every generated unit read by the real systemd.

Golden fixtures live in tests/generator/: `NAME.json|yaml|yml` (the manifest, copied into a
fresh manifest directory as is) and `NAME.assert`, one assertion a line (`#` comments):

    with-pod NAME                          another (minimal, valid) manifest in the same directory
    unit FILE                              later key assertions read FILE (default pod@NAME.service)
    assert-key-is SECTION KEY VALUE        the key's only value is VALUE
    assert-key-values SECTION KEY JSON     the key's values, in order
    assert-key-contains SECTION KEY TEXT   some value of the key contains TEXT
    assert-key-missing SECTION KEY
    assert-sections SECTION...             the unit's sections, in order
    assert-exec-argv SECTION KEY JSON      the command reads back as the JSON argv, both with our
                                           parser and with systemd's (systemd-analyze)
    assert-file PATH / assert-no-file PATH
    assert-symlink PATH TARGET             PATH links to OUT/TARGET
    assert-failed                          exit status 1 and no pod@NAME.service
    assert-stderr-contains TEXT / assert-stderr-lines N

`@PODS@` in an assertion is the manifest directory. Without assert-failed the run must exit 0
with nothing on stderr. Adding a case is adding two files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rktd_units import templatec, units
from rktd_units.errors import ManifestError
from rktd_units.model import ManifestFormat, NameValue, Pod, PodFile
from rktd_units.unitfile import expand_env, parse, split_exec
from tests.helpers import systemd_units

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "generator"
SCRIPT = ROOT / "generators" / "rktd-generator"
SUFFIXES = (".json", ".yaml", ".yml")
CASES = sorted(p for p in FIXTURES.iterdir() if p.suffix in SUFFIXES)
needs_systemd = pytest.mark.skipif(not systemd_units.available(), reason="systemd-analyze is not installed")


def minimal_pod(name: str, annotations: Mapping[str, str] | None = None) -> str:
    app = {"exec": [f"/bin/{name}"], "user": "0", "group": "0"}
    doc = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [{"name": "app", "image": {"name": "example.com/app"}, "app": app}],
        "annotations": [{"name": k, "value": v} for k, v in (annotations or {}).items()],
    }
    return json.dumps(doc, indent=4) + "\n"


def pods_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


def put(directory: Path, name: str, text: str | bytes) -> Path:
    path = directory / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(0o644)
    return path


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    out: Path
    files: dict[str, str] = field(default_factory=dict)  # relative path -> text (regular files)
    links: dict[str, str] = field(default_factory=dict)  # relative path -> link target

    def units(self) -> dict[str, str]:
        return {p: t for p, t in self.files.items() if "/" not in p}


def run_generator(
    pods: Path | str | bytes, out: Path, *args: str, env: Mapping[str, str] | None = None
) -> Run:
    """The installed script, as systemd runs it (NORMAL EARLY LATE), with the venv's interpreter."""
    argv = [sys.executable, "-I", str(SCRIPT), *(args or (str(out), f"{out}.early", f"{out}.late"))]
    environ: dict[str | bytes, str | bytes] = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SYSTEMD_LOG_TARGET": "console",
    }
    environ[b"RKTD_PODS_PATH" if isinstance(pods, bytes) else "RKTD_PODS_PATH"] = (
        pods if isinstance(pods, bytes) else str(pods)
    )
    environ.update(env or {})
    proc = subprocess.run(argv, capture_output=True, env=environ, timeout=120)  # type: ignore[arg-type]
    run = Run(proc.returncode, proc.stdout.decode(), proc.stderr.decode(errors="replace"), out)
    if out.is_dir():
        for path in sorted(out.rglob("*")):
            rel = str(path.relative_to(out))
            if path.is_symlink():
                run.links[rel] = os.readlink(path)
            elif path.is_file():
                run.files[rel] = path.read_text()
    return run


# -- Golden fixtures -------------------------------------------------------------------------------


def test_every_fixture_has_its_assertions() -> None:
    manifests = {p.stem for p in CASES}
    sidecars = {p.stem for p in FIXTURES.glob("*.assert")}
    assert manifests == sidecars
    assert len(manifests) >= 10


def _check_fixture(
    lines: list[str], run: Run, name: str, pods: Path, verified: systemd_units.Verified | None
) -> None:
    current = f"pod@{name}.service"
    failed = False
    for line in lines:
        op, _, rest = line.replace("@PODS@", str(pods)).partition(" ")
        if op == "unit":
            current = rest
            continue
        unit = (
            parse(run.files[current], current)
            if op.startswith("assert-key")
            or op
            in (
                "assert-exec-argv",
                "assert-sections",
                "assert-key-values",
            )
            else None
        )
        if op == "assert-key-is":
            section, key, value = rest.split(" ", 2)
            assert unit is not None and unit.get(section, key) == [value], (line, run.files[current])
        elif op == "assert-key-values":
            section, key, text = rest.split(" ", 2)
            assert unit is not None and unit.get(section, key) == json.loads(text), line
        elif op == "assert-key-contains":
            section, key, value = rest.split(" ", 2)
            assert unit is not None and any(value in v for v in unit.get(section, key)), line
        elif op == "assert-key-missing":
            section, key = rest.split(" ")
            assert unit is not None and unit.get(section, key) == [], line
        elif op == "assert-sections":
            assert unit is not None and unit.section_names() == rest.split(), line
        elif op == "assert-exec-argv":
            section, key, text = rest.split(" ", 2)
            argv = json.loads(text)
            assert unit is not None
            assert [split_exec(v)[1] for v in unit.get(section, key)] == [[argv]], line
            if verified is not None:  # and the real systemd reads the same
                assert [expand_env(a, {}) for a in verified.exec_argv(current, key)] == [argv], line
        elif op == "assert-file":
            assert rest in run.files, line
        elif op == "assert-no-file":
            assert rest not in run.files and rest not in run.links, line
        elif op == "assert-symlink":
            path, target = rest.split(" ")
            assert run.links.get(path) == str(run.out / target), line
            assert target in run.files
        elif op == "assert-failed":
            failed = True
            assert run.returncode == 1, run.stderr
            assert f"pod@{name}.service" not in run.files
        elif op == "assert-stderr-contains":
            assert rest in run.stderr, (line, run.stderr)
        elif op == "assert-stderr-lines":
            assert len(run.stderr.splitlines()) == int(rest), run.stderr
        else:
            raise AssertionError(f"unknown assertion {line!r}")
    if not failed:
        assert (run.returncode, run.stderr) == (0, ""), run.stderr


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
def test_fixture(case: Path, tmp_path: Path) -> None:
    lines = [
        line
        for line in case.with_suffix(".assert").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pods = pods_dir(tmp_path / "pods")
    put(pods, case.name, case.read_bytes())
    for line in lines:
        if line.startswith("with-pod "):
            put(pods, line.split()[1] + ".json", minimal_pod(line.split()[1]))
    run = run_generator(pods, tmp_path / "out")
    verified = None
    if systemd_units.available() and run.units():
        files = {**run.units(), "pod@.service": (ROOT / "templates" / "pod@.service").read_text()}
        verified = systemd_units.SystemdRoot(tmp_path / "root").verify(files, sorted(run.units()))
        assert verified.clean, verified.stderr
        for unit_name, text in run.units().items():  # SourcePath= as systemd read it
            assert verified.field(unit_name, "Source Path") == parse(text).get("Unit", "SourcePath")
        if f"pod@{case.stem}.service" in run.files:
            assert verified.field(f"pod@{case.stem}.service", "Source Path") == [str(pods / case.name)]
    _check_fixture([ln for ln in lines if not ln.startswith("with-pod ")], run, case.stem, pods, verified)


# -- Manifest paths and long values ------------------------------------------------------------------


@needs_systemd
def test_hostile_manifest_directory_stays_data(tmp_path: Path) -> None:
    pods = pods_dir(tmp_path / "we ird %n $HOME ${X} \"q\" 'q' \\ ; é")
    put(pods, "web.json", minimal_pod("web"))
    run = run_generator(pods, tmp_path / "out")
    assert (run.returncode, run.stderr) == (0, "")
    manifest = str(pods / "web.json")
    argv = [units.RKTD, "run", f"--pod-manifest={manifest}", f"--uuid-file-save={units.uuid_file('web')}"]
    argv += ["--stage1=nspawn", "--net=default"]
    unit = parse(run.files["pod@web.service"])
    assert split_exec(unit.get("Service", "ExecStart")[0])[1] == [argv]
    verified = systemd_units.SystemdRoot(tmp_path / "root").verify(run.units())
    assert verified.clean, verified.stderr
    assert [expand_env(a, {}) for a in verified.exec_argv("pod@web.service", "ExecStart")] == [argv]
    assert verified.field("pod@web.service", "Source Path") == [manifest]


@pytest.mark.parametrize(
    "dirname", [b"new\nline", b"tab\there", b"not-utf8-\xff"], ids=["newline", "tab", "latin1"]
)
def test_manifest_directory_that_cannot_be_named_in_a_unit_is_refused(
    tmp_path: Path, dirname: bytes
) -> None:
    pods = os.fsencode(tmp_path) + b"/" + dirname
    os.mkdir(pods, 0o755)
    fd = os.open(pods + b"/web.json", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, minimal_pod("web").encode())
    os.close(fd)
    good = pods_dir(tmp_path / "good")
    put(good, "ok.json", minimal_pod("ok"))
    run = run_generator(pods + b":" + os.fsencode(good), tmp_path / "out")
    assert run.returncode == 1
    assert "web.json: (file name): cannot be named in a unit" in run.stderr
    assert len(run.stderr.splitlines()) == 1
    assert sorted(run.files) == ["pod@ok.service"]


@needs_systemd
def test_long_values_pass_until_the_kernels_argument_limit(tmp_path: Path) -> None:
    pods = pods_dir(tmp_path / "pods")
    long_word = "d" * 100_000
    put(pods, "long.json", minimal_pod("long", {"rktd/dns": long_word}))
    put(pods, "toolong.json", minimal_pod("toolong", {"rktd/dns": "d" * 200_000}))
    run = run_generator(pods, tmp_path / "out")
    assert run.returncode == 1
    assert "toolong.json: annotations[rktd/dns]:" in run.stderr and "argument limit" in run.stderr
    assert len(run.stderr) < 1000  # the error does not echo the value
    verified = systemd_units.SystemdRoot(tmp_path / "root").verify(run.units())
    assert verified.clean, verified.stderr
    assert verified.exec_argv("pod@long.service", "ExecStart")[0][-1] == f"--dns={long_word}"


# -- The run as a whole ----------------------------------------------------------------------------


def test_no_manifests_is_success_and_writes_nothing(tmp_path: Path) -> None:
    run = run_generator(tmp_path / "absent", tmp_path / "out")
    assert (run.returncode, run.stderr, run.files, run.links) == (0, "", {}, {})


def test_only_normal_dir_is_written(tmp_path: Path) -> None:
    pods = pods_dir(tmp_path / "pods")
    put(pods, "a.json", minimal_pod("a", {"rktd/wanted-by": "multi-user.target"}))
    run = run_generator(pods, tmp_path / "out")
    assert run.returncode == 0
    assert not Path(f"{tmp_path / 'out'}.early").exists() and not Path(f"{tmp_path / 'out'}.late").exists()
    assert sorted(run.files) == ["pod@a.service"]
    assert not any(p.name.startswith(".#") for p in (tmp_path / "out").rglob("*"))


def test_dry_run_prints_every_file_and_writes_nothing(tmp_path: Path) -> None:
    pods = pods_dir(tmp_path / "pods")
    put(pods, "a.json", minimal_pod("a", {"rktd/wanted-by": "multi-user.target"}))
    reference = run_generator(pods, tmp_path / "ref")
    cwd_before = sorted(os.listdir(tmp_path))
    run = run_generator(pods, tmp_path / "out", "--dry-run")
    assert run.returncode == 0 and run.stderr == ""
    assert sorted(os.listdir(tmp_path)) == cwd_before
    expected = (
        f"# pod@a.service\n{reference.files['pod@a.service']}\n"
        "# multi-user.target.wants/pod@a.service -> pod@a.service\n"
    )
    assert run.stdout == expected


def test_help_and_usage(tmp_path: Path) -> None:
    run = run_generator(tmp_path, tmp_path / "out", "--help")
    assert run.returncode == 0
    assert "NORMAL [EARLY LATE]" in run.stdout and "--dry-run" in run.stdout
    from rktd_units.annotations import ANNOTATIONS

    assert all(a.name in run.stdout for a in ANNOTATIONS)
    bad = run_generator(tmp_path, tmp_path / "out", "a", "b")
    assert bad.returncode == 2 and "NORMAL [EARLY LATE]" in bad.stderr
    bad = run_generator(tmp_path, tmp_path / "out", "--frobnicate")
    assert bad.returncode == 2 and "--frobnicate" in bad.stderr


def _fixture_pods(directory: Path) -> Path:
    pods = pods_dir(directory)
    for case in CASES:
        put(pods, case.name, case.read_bytes())
    for name in ("db", "cache", "fine"):
        put(pods, f"{name}.json", minimal_pod(name))
    return pods


def test_output_is_byte_deterministic(tmp_path: Path) -> None:
    pods = _fixture_pods(tmp_path / "pods")
    first = run_generator(pods, tmp_path / "one")
    second = run_generator(pods, tmp_path / "two")
    assert first.returncode == 1  # the fixtures include bad manifests
    assert len(first.units()) >= 10
    assert first.files == second.files
    assert {
        p: t.replace(str(tmp_path / "two"), str(tmp_path / "one")) for p, t in second.links.items()
    } == first.links
    assert first.stderr.replace(first.stderr.split(":")[0], "") != ""  # errors were reported
    strip = [line.split("]: ", 1)[1] for line in first.stderr.splitlines()]
    assert strip == [line.split("]: ", 1)[1] for line in second.stderr.splitlines()]


def test_concurrent_runs_never_leave_a_torn_unit(tmp_path: Path) -> None:
    pods = pods_dir(tmp_path / "pods")
    for i in range(150):
        put(pods, f"p{i}.json", minimal_pod(f"p{i}", {"rktd/wanted-by": "multi-user.target"}))
    reference = run_generator(pods, tmp_path / "ref")
    out = tmp_path / "out"
    env = {"PATH": os.environ.get("PATH", ""), "RKTD_PODS_PATH": str(pods), "SYSTEMD_LOG_TARGET": "console"}
    argv = [sys.executable, "-I", str(SCRIPT), str(out)]
    procs = [subprocess.Popen(argv, env=env, stderr=subprocess.PIPE) for _ in range(4)]
    seen_partial = []
    while any(p.poll() is None for p in procs):  # read while they write: never a partial unit
        for path in out.glob("pod@*.service") if out.exists() else ():
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            if text != reference.files[path.name]:
                seen_partial.append(path.name)
    assert [p.wait() for p in procs] == [0, 0, 0, 0]
    assert seen_partial == []
    final = run_generator(pods, out, str(out))  # reads the tree
    assert final.files == reference.files
    assert not any(p.name.startswith(".#") for p in out.rglob("*"))


# -- Logging ---------------------------------------------------------------------------------------


def test_log_level_is_honoured(tmp_path: Path) -> None:
    pods = pods_dir(tmp_path / "pods")
    put(pods, "good.json", minimal_pod("good"))
    put(pods, "bad.json", "{")
    debug = run_generator(pods, tmp_path / "o1", env={"SYSTEMD_LOG_LEVEL": "debug"})
    assert "good: wrote pod@good.service" in debug.stderr and "bad.json:" in debug.stderr
    quiet = run_generator(pods, tmp_path / "o2", env={"SYSTEMD_LOG_LEVEL": "emerg"})
    assert (quiet.returncode, quiet.stderr) == (1, "")
    numeric = run_generator(pods, tmp_path / "o3", env={"SYSTEMD_LOG_LEVEL": "3"})
    assert numeric.stderr.count("\n") == 1 and "bad.json:" in numeric.stderr
    assert numeric.stderr.startswith("rktd-generator[")


@pytest.mark.skipif(not os.access("/dev/kmsg", os.R_OK | os.W_OK), reason="/dev/kmsg is not accessible")
def test_errors_go_to_kmsg(tmp_path: Path) -> None:
    pods = pods_dir(tmp_path / "pods")
    put(pods, "kmsg-bad.json", "{")
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        pytest.skip(f"cannot read /dev/kmsg: {e}")
    try:
        os.lseek(fd, 0, os.SEEK_END)
        proc = subprocess.Popen(
            [sys.executable, "-I", str(SCRIPT), str(tmp_path / "out")],
            env={
                "PATH": os.environ.get("PATH", ""),
                "RKTD_PODS_PATH": str(pods),
                "SYSTEMD_LOG_TARGET": "auto",
            },
            stderr=subprocess.PIPE,
            text=True,
        )
        _, stderr = proc.communicate(timeout=60)
        records = []
        while True:
            try:
                records.append(os.read(fd, 8192).decode(errors="replace"))
            except BlockingIOError:
                break
            except OSError:  # EPIPE: records overwritten while reading; fine for this check
                continue
    finally:
        os.close(fd)
    assert proc.returncode == 1 and stderr == ""
    mine = [r.split(";", 1)[1] for r in records if f"rktd-generator[{proc.pid}]: " in r]
    assert len(mine) == 1 and mine[0].startswith(f"rktd-generator[{proc.pid}]: {pods / 'kmsg-bad.json'}: ")
    assert records[[f"rktd-generator[{proc.pid}]" in r for r in records].index(True)].startswith("27,")


# -- Lean start-up ---------------------------------------------------------------------------------


def test_generator_imports_no_heavy_modules(tmp_path: Path) -> None:
    pods = pods_dir(tmp_path / "pods")
    put(pods, "a.json", minimal_pod("a"))
    code = (
        "import sys\nstarted = set(sys.modules)\nfrom rktd_units import generator\n"
        "rc = generator.main(['--dry-run'])\n"
        "sys.stderr.write(' '.join(sorted(set(sys.modules) - started)))\n"
    )  # what the generator imports: not what the interpreter (here a virtualenv's) had at start
    env = {"PATH": os.environ.get("PATH", ""), "RKTD_PODS_PATH": str(pods)}
    proc = subprocess.run([sys.executable, "-I", "-c", code], env=env, capture_output=True, text=True)
    modules = set(proc.stderr.split())
    assert "pod@a.service" in proc.stdout
    assert not {m.split(".")[0] for m in modules} & {
        "click",
        "jinja2",
        "yaml",
        "markupsafe",
        "argparse",
        "tempfile",
        "subprocess",
        # dataclasses (and inspect, ast, dis, tokenize with it): @frozen classes are precompiled
        "dataclasses",
        "inspect",
        "ast",
        "dis",
        "tokenize",
        # pathlib (and urllib.parse, ipaddress with it): podpath and formats use strings
        "pathlib",
        "urllib",
        "ipaddress",
        # only for manifests that need them: `created`, hostIP, a misspelt key
        "datetime",
        "difflib",
    }
    assert "rktd_units.formats.kube" not in modules
    # rktd/net is checked with stage0's own --net grammar (netspec.py), not through network.py and CNI
    assert "rktd_units.netspec" in modules
    assert not modules & {"rktd_units.network", "rktd_units.cni"}


# -- Templates -------------------------------------------------------------------------------------


def test_compiled_templates_and_static_unit_are_up_to_date() -> None:
    for path, text in templatec.build(ROOT).items():
        assert path.read_text() == text, f"{path} is stale: run scripts/compile-templates"


def _jinja_templates() -> units.Templates:
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ROOT / "templates")),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    env.filters.update(units.FILTERS)
    names = [p.name for p in (ROOT / "templates").glob("*.j2")]
    return {n: (lambda c, f, n=n: env.get_template(n).render(**c)) for n in names}


def test_compiled_templates_render_exactly_as_jinja2() -> None:
    from rktd_units import formats

    jinja = _jinja_templates()
    assert units.static_template(jinja) == units.static_template()
    names = {p.stem for p in CASES} | {"db", "cache", "fine", "kube-web"}
    compared = 0
    for case in CASES:
        try:
            podfile = formats.load(case, case.stem)
            expected = units.convert(podfile, names)
        except ManifestError:
            continue
        got = units.convert(podfile, names, jinja)
        assert [(o.path, str(o.unit), o.link) for o in got] == [
            (o.path, str(o.unit), o.link) for o in expected
        ]
        compared += 1
    assert compared >= 8


SUBSET = """\
{# every construct the compiler translates #}
head {{ a }} and {{ b | up }} and {{ b | wrap('<>') }}
{% if not a %}
no a
{% elif b %}
  b: {{ b }}
{% else %}
neither
{% endif %}
    {% for k, v in pairs %}
  {{ k }}={{ v | up }}
    {% endfor %}
{% for x in empty %}
{% endfor %}
tail"""


@pytest.mark.parametrize(
    "context",
    [
        {"a": "", "b": "x", "pairs": [("k", "v"), ("k2", "%")], "empty": []},
        {"a": "A", "b": "", "pairs": [], "empty": []},
        {"a": 0, "b": "", "pairs": [], "empty": []},
        {"a": "A", "b": "B", "pairs": [("1", "2")], "empty": []},
    ],
)
def test_template_compiler_matches_jinja2_on_its_whole_subset(context: dict[str, object]) -> None:
    jinja2 = pytest.importorskip("jinja2")
    filters = {"up": lambda v: str(v).upper(), "wrap": lambda v, w: w[0] + str(v) + w[1]}
    env = jinja2.Environment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    env.filters.update(filters)
    namespace: dict[str, object] = {}
    exec(templatec.HEADER + templatec.compile_template("t.j2", SUBSET), namespace)
    render = namespace["render_t"]
    assert callable(render)
    assert render(context, filters) == env.from_string(SUBSET).render(**context)


@pytest.mark.parametrize(
    "source",
    [
        "{% include 'x' %}\n",
        "a {% if x %}b{% endif %}\n",
        "{{ x + 1 }}\n",
        "{% if x %}\n",
        "{% endfor %}\n",
        "{{ x | f(y) }}\n",
    ],
)
def test_template_compiler_refuses_what_it_does_not_translate(source: str) -> None:
    with pytest.raises(templatec.TemplateError):
        templatec.compile_template("t.j2", source)


# -- The static template and drop-ins, read by systemd ---------------------------------------------


@needs_systemd
def test_static_template_runs_any_manifest_by_name(tmp_path: Path) -> None:
    static = (ROOT / "templates" / "pod@.service").read_text()
    verified = systemd_units.SystemdRoot(tmp_path / "root").verify(
        {"pod@.service": static}, ["pod@later.service"]
    )
    assert verified.clean, verified.stderr
    argv = [units.RKTD, "run", "--pod-manifest=later", "--uuid-file-save=/run/rktd/pod@later/uuid"]
    assert verified.exec_argv("pod@later.service", "ExecStart") == [argv]
    assert verified.exec_argv("pod@later.service", "ExecStopPost") == [units.stop_post("later")]
    assert verified.field("pod@later.service", "LogExtraFields") == ["RKTD_POD=later"]
    generated = parse(
        units.convert(PodFile("x", "/p/x.json", ManifestFormat.APPC, Pod()), {"x"})[0].unit.__str__()
    )
    static_unit = parse(static)
    for section in ("Unit", "Service"):  # the same directives, but for what only a manifest can say
        assert {a.key for _, a in static_unit.assignments(section)} <= {
            a.key for _, a in generated.assignments(section)
        }


@needs_systemd
def test_drop_ins_still_apply_to_generated_units(tmp_path: Path) -> None:
    pods = pods_dir(tmp_path / "pods")
    put(pods, "web.json", minimal_pod("web"))
    run = run_generator(pods, tmp_path / "out")
    files = {**run.units(), "pod@web.service.d/50-local.conf": "[Service]\nTimeoutStopSec=7\n"}
    verified = systemd_units.SystemdRoot(tmp_path / "root").verify(files, ["pod@web.service"])
    assert verified.clean, verified.stderr
    assert verified.field("pod@web.service", "TimeoutStopSec") == ["7s"]


# -- Random hostile values through the whole converter ---------------------------------------------

WORDS = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=20)
# Values of network arguments (`default:K0=V0;K1=V1`): what the --net grammar (netspec.py) lets through,
# hostile characters included.
NET_ARGS = st.text(
    st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters=",;="),
    max_size=20,
)


@given(
    dns=st.lists(WORDS, max_size=4),
    opts=st.lists(NET_ARGS, max_size=2),
    directory=st.text(st.characters(blacklist_characters="\x00/"), min_size=1, max_size=20),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_annotation_values_never_change_the_command_line(
    dns: list[str], opts: list[str], directory: str
) -> None:
    path = f"/pods/{directory}/web.json"
    net = "default:" + ";".join(f"K{i}={v}" for i, v in enumerate(opts))
    annotations = (
        NameValue("rktd/dns", " ".join(dns)),
        NameValue("rktd/dns-opt", " ".join(dns[::-1])),
        NameValue("rktd/net", net),
    )
    podfile = PodFile("web", path, ManifestFormat.APPC, Pod(annotations=annotations))
    expected = [units.RKTD, "run", f"--pod-manifest={path}", f"--uuid-file-save={units.uuid_file('web')}"]
    expected += ["--stage1=nspawn", f"--net={net}", *(f"--dns={w}" for w in " ".join(dns).split())]
    expected += [f"--dns-opt={w}" for w in " ".join(dns[::-1]).split()]
    try:
        outputs = units.convert(podfile, {"web"})
    except ManifestError as e:  # only what cannot be written is refused, naming the field
        assert e.path == path and e.field == "(file name)"
        assert any(c < " " or c == "\x7f" or "\ud800" <= c <= "\udfff" for c in directory)
        return
    unit = parse(str(outputs[0].unit))
    assert split_exec(unit.get("Service", "ExecStart")[0])[1] == [expected]
    assert [a.key for _, a in unit.assignments("Service")].count("ExecStart") == 1
    assert unit.section_names() == ["Unit", "Service"]
