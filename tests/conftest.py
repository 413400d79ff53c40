"""Shared fixtures: real LETHE_HOMEs on disk, built once per test session.

``base_home`` is the embedded default exactly as `lethe bootstrap` builds it by default, and
``fashion_home`` the Fashion-MNIST domain and its base DCGAN, each registered from the
committed weights of such a run (``tests/homes.py``); ``quick_home`` shares the digits'
domain (guide and judge) and VAE and inpainter, with a DCGAN that bootstrap pre-trains for
2 epochs there, for tests of error paths that need a registry but not a good generator. Tests that change
state work on a copy (``base_copy`` / ``quick_copy`` / ``fashion_copy``). A developer may set
``LETHE_TEST_BASE_HOME`` (``LETHE_TEST_QUICK_HOME``, ``LETHE_TEST_FASHION_HOME``) to a home
already built: it is copied, and what it lacks is added. Under pytest-xdist the first worker
to ask builds each home and the others copy it (``_built_once``)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

# Each pytest-xdist worker gets its share of the cores, and the servers, jobs and CLI runs it
# starts inherit it: two workers each spinning two OpenMP threads on two cores lose time.
TEST_THREADS = max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
os.environ["OMP_NUM_THREADS"] = str(TEST_THREADS)

import torch  # noqa: E402  (after OMP_NUM_THREADS)

from unlearning.bootstrap import bootstrap
from unlearning.registry import Registry

torch.set_num_threads(TEST_THREADS)


# The heaviest modules first, by their tests' time in a fresh-clone run on 2 cores: loadfile
# hands whole modules to the two xdist workers in collection order, so the long ones start
# at once and the run ends on short ones. ``pytest_configure`` stops xdist re-sorting modules
# by their number of tests (its default), which left test_fashion (5 tests, the longest
# module) to the end of the run. Modules not named follow in file order.
HEAVIEST_FIRST = ["test_fashion", "test_domains", "test_redaction", "test_service", "test_import", "test_faults",
                  "test_scale_out", "test_feedback", "test_bench_scripts", "test_replicas", "test_attacks",
                  "test_i2i", "test_service_input", "test_cli", "test_fuzz", "test_prometheus"]


def pytest_configure(config: pytest.Config) -> None:
    # what ``--no-loadscope-reorder`` sets, without failing where xdist is not loaded
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: a module's tests keep their order


def _built_once(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """This worker's own copy of a home that ``build(folder)`` writes. Under pytest-xdist the
    first worker to ask builds it (registering Fashion-MNIST's committed pair takes a minute
    and a half of one core) while the others wait on a lock; then each works on a copy of
    its own, so no worker sees another's writes."""
    own = tmp_path_factory.mktemp(name) / "home"
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(own)
    shared = tmp_path_factory.getbasetemp().parent / f"shared-{name}"  # one per test run
    with FileLock(f"{shared}.lock"):
        if not (shared / "built").exists():
            shutil.rmtree(shared, ignore_errors=True)  # a worker that died half-way
            build(shared / "home")
            (shared / "built").touch()
    shutil.copytree(shared / "home", own)
    return own


def _bootstrapped(root: Path, epochs: int | None, reuse: str | None = None) -> Path:
    home = root / "home"
    if reuse:
        shutil.copytree(reuse, home)
    bootstrap(Registry(home), epochs=epochs, show_progress=False)
    return home


@pytest.fixture(scope="session")
def base_home(tmp_path_factory) -> Path:
    """The digits as `lethe bootstrap` builds them by default, from the committed weights of
    its run (tests/fixtures/digits/; ``quick_home`` still pre-trains a DCGAN for real)."""
    from homes import build_builtin_home

    reuse = os.environ.get("LETHE_TEST_BASE_HOME")
    if reuse:
        return _bootstrapped(tmp_path_factory.mktemp("base"), None, reuse)
    return _built_once(tmp_path_factory, "base", lambda home: build_builtin_home(home, "digits"))


@pytest.fixture(scope="session")
def quick_home(tmp_path_factory, request) -> Path:
    reuse = os.environ.get("LETHE_TEST_QUICK_HOME")

    def build(home: Path) -> Path:
        if reuse:
            shutil.copytree(reuse, home)
        else:  # everything of the base but its DCGAN, which bootstrap then trains for 2 epochs
            base_home = request.getfixturevalue("base_home")
            base = Registry(base_home)
            shutil.copytree(base_home, home, ignore=lambda folder, names: [
                n for n in names if re.fullmatch(r"digits-v\d+|digits\.json|jobs\.sqlite.*", n)])
            assert base.active("digits") and Registry(home).active("digits") is None
        bootstrap(Registry(home), epochs=2, show_progress=False)
        return home

    return _built_once(tmp_path_factory, "quick", build)


@pytest.fixture(scope="session")
def fashion_home(tmp_path_factory) -> Path:
    from homes import build_builtin_home

    reuse = os.environ.get("LETHE_TEST_FASHION_HOME")
    if reuse:
        home = tmp_path_factory.mktemp("fashion") / "home"
        shutil.copytree(reuse, home)
        return home
    return _built_once(tmp_path_factory, "fashion", lambda home: build_builtin_home(home, "fashion-mnist"))


def _copy(home: Path, tmp_path: Path, monkeypatch) -> Path:
    target = tmp_path / "home"
    shutil.copytree(home, target)
    monkeypatch.setenv("LETHE_HOME", str(target))
    return target


@pytest.fixture
def base_copy(base_home, tmp_path, monkeypatch) -> Path:
    return _copy(base_home, tmp_path, monkeypatch)


@pytest.fixture
def quick_copy(quick_home, tmp_path, monkeypatch) -> Path:
    return _copy(quick_home, tmp_path, monkeypatch)


@pytest.fixture
def fashion_copy(fashion_home, tmp_path, monkeypatch) -> Path:
    return _copy(fashion_home, tmp_path, monkeypatch)


def snapshot(home: Path) -> dict[str, bytes]:
    """Every file under a LETHE_HOME with its bytes: to prove a failed request changed nothing."""
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()
            and not p.name.endswith(".lock")}


def flip_a_byte(path: Path, offset: int | None = None) -> None:
    """Damage a stored file as a failing disk would: one byte inverted (the middle one by default)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------ PostgreSQL and S3 (one per session)


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster (Debian's `postgresql` package; .ci/run installs it)."""
    from backends import PG_BIN, PostgresCluster

    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"PostgreSQL server binaries not found in {PG_BIN}: apt-get install postgresql "
                    "(or set LETHE_TEST_PG_BIN)")
    cluster = PostgresCluster()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def s3():
    """moto's standalone S3 server."""
    from backends import S3Server

    server = S3Server()
    yield server
    server.close()
