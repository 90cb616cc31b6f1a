"""The key-scheme guard: class fingerprints from the rules, retirement in a real StateStore.

Each store test opens a real StateStore (diskcache) in a pytest tmp dir; time is passed with
`now=`. The rules are real rules files compiled by `load_rules`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from patchcache.errors import StateError
from patchcache.prefetch.cli import channel_group, status_cmd
from patchcache.rules import CompiledRules, load_rules
from patchcache.rules.keyscheme import fingerprint, scheme_fields
from patchcache.rules.model import ClassRule
from patchcache.state import ClassScheme, LeaseLostError, ObjectState, StateStore
from patchcache.state.keyschemes import CHUNK, SizeRejudge, decode_events, plan
from patchcache.state.open import open_state
from patchcache.state_guard import class_schemes, guard_key_schemes

T0 = 1_700_000_000.0

RULES = """
packs = []

[classes.alpha]
hosts = ["a.example"]
path = '^/files/(?P<name>[^/]+)$'
key = "/f/{{name}}{{query}}"
volatile_params = [{alpha_volatile}]
max_object_size = "{alpha_max}"

[classes.beta]
hosts = ["b.example"]
path = '^/.*$'
max_object_size = "1 GiB"
"""


def write_rules(
    tmp_path: Path, *, alpha_volatile: str = '"token"', alpha_max: str = "1 GiB", name: str = "r"
) -> CompiledRules:
    path = tmp_path / f"{name}.toml"
    path.write_text(RULES.format(alpha_volatile=alpha_volatile, alpha_max=alpha_max))
    return load_rules(path)


@pytest.fixture(params=["dir", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """The guard's contract on both backends: a state dir and a real redis-server."""
    spec = str(tmp_path / "state")
    if request.param == "redis":
        spec = request.getfixturevalue("redis_state_url")
    with open_state(spec) as opened:
        yield opened


def key_of(rules: CompiledRules, url: str) -> str:
    match = rules.match(url)
    assert match is not None, url
    return match.key


def sight(store: StateStore, rules: CompiledRules, url: str, size: int = 1000) -> str:
    match = rules.match(url)
    assert match is not None
    assert store.record_first_sight(match.key, url, match.cls.name, size, None, None, now=T0)
    return match.key


def collect(store: StateStore, rules: CompiledRules, now: float = T0 + 100) -> list[str]:
    lines: list[str] = []
    guard_key_schemes(store, rules, lines.append, now=now)
    return lines


# ------------------------------------------------------------------- fingerprints (rules side)


def rule(**changes: object) -> ClassRule:
    base: dict[str, object] = {
        "hosts": ["a.example", "*.b.example"],
        "path": r"^/(?P<name>.+)$",
        "key": "/{name}{query}",
        "volatile_params": ["t", "sig"],
    }
    return ClassRule.model_validate({**base, **changes})


def fp(**changes: object) -> str:
    return fingerprint(scheme_fields(rule(**changes)))


@pytest.mark.parametrize(
    "changes",
    [
        {"max_object_size": "1 MiB"},
        {"prefetch_windows": ["22:00-06:00"]},
        {"prefetch_rate": "1 MiB/s"},
        {"description": "other words"},
        {"cache": False},
        {"prefetch": False},
        {"expand_ranges": False},
        {"freshness": "pin"},
        {"preferred_mirror": "http://mirror.example"},
        {"hosts": ["*.b.example", "a.example"]},  # the same set, reordered
        {"volatile_params": ["sig", "t"]},
        {"schemes": ["https", "http"]},
        {"connected_cache": True},  # no effect without trusted_networks
    ],
    ids=lambda c: next(iter(c)),
)
def test_fingerprint_ignores_what_does_not_change_keys(changes: dict[str, object]) -> None:
    assert fp(**changes) == fp()


@pytest.mark.parametrize(
    "changes",
    [
        {"hosts": ["a.example"]},
        {"path": r"^/x/(?P<name>.+)$"},
        {"key": "/k/{name}{query}"},
        {"volatile_params": ["t"]},
        {"volatile_params": ["*"]},
        {"allow_ip_literals": True},
        {"schemes": ["http"]},
        {"trusted_networks": ["10.1.0.0/16"]},
    ],
    ids=lambda c: next(iter(c)),
)
def test_fingerprint_follows_what_changes_keys(changes: dict[str, object]) -> None:
    assert fp(**changes) != fp()


def test_fingerprint_follows_trusted_networks_and_connected_cache() -> None:
    """A new network brings whatever answers there onto the class's keys: its records retire.
    Connected Cache counts once there are networks; the order of the list does not."""
    one = fp(trusted_networks=["10.1.0.0/16"])
    assert fp(trusted_networks=["10.1.0.0/16", "10.2.0.0/16"]) != one
    assert fp(trusted_networks=["10.1.0.0/24"]) != one
    assert fp(trusted_networks=["10.1.0.0/16"], connected_cache=True) != one
    assert fp(trusted_networks=["2001:db8::/32", "10.1.0.0/16"]) == fp(
        trusted_networks=["10.1.0.0/16", "2001:db8::/32"]
    )


def test_class_schemes_cover_enabled_classes_with_their_limits(tmp_path: Path) -> None:
    schemes = class_schemes(write_rules(tmp_path))
    assert sorted(schemes) == ["alpha", "beta"]
    assert schemes["alpha"].max_object_size == 1024**3
    assert schemes["alpha"].fields["volatile_params"] == ["token"]


# ------------------------------------------------------------------------- plan (pure)


def scheme(fp_text: str, size: int = 100, **fields: object) -> ClassScheme:
    return ClassScheme(fp_text, {"key": fp_text, **fields}, size)


def test_plan_adopts_when_nothing_was_recorded() -> None:
    todo = plan(None, {"a": scheme("1")})
    assert todo.write and not todo.retire and not todo.rejudge
    assert todo.recorded == {"a": scheme("1")}


def test_plan_with_nothing_changed_writes_nothing() -> None:
    todo = plan({"a": scheme("1")}, {"a": scheme("1")})
    assert not todo.write


def test_plan_retires_changed_classes_naming_fields_and_keeps_absent_ones() -> None:
    recorded = {"a": scheme("1", hosts=["x"]), "b": scheme("2"), "gone": scheme("3")}
    current = {"a": scheme("9", hosts=["y"]), "b": scheme("2"), "new": scheme("4")}
    todo = plan(recorded, current)
    assert todo.retire == {"a": ("hosts", "key")}
    assert todo.recorded == {"a": current["a"], "b": recorded["b"], "gone": recorded["gone"],
                             "new": current["new"]}  # fmt: skip


def test_plan_rejudges_a_size_change_without_retiring() -> None:
    todo = plan({"a": scheme("1", 100)}, {"a": scheme("1", 50)})
    assert todo.write and not todo.retire
    assert todo.rejudge == {"a": SizeRejudge(100, 50)}


# ------------------------------------------------------------------------- the store


def test_first_guard_adopts_existing_records(store: StateStore, tmp_path: Path) -> None:
    rules = write_rules(tmp_path)
    key = sight(store, rules, "http://a.example/files/x.cab")
    assert store.key_schemes() is None
    assert collect(store, rules) == []
    assert store.get(key) is not None
    recorded = store.key_schemes()
    assert recorded is not None and sorted(recorded) == ["alpha", "beta"]
    assert store.retirements() == []


def test_changed_class_is_retired_and_other_class_kept(store: StateStore, tmp_path: Path) -> None:
    old = write_rules(tmp_path, name="old")
    collect(store, old)
    a_key = sight(store, old, "http://a.example/files/x.cab?token=1&v=2")
    a_too_big = "http://a.example/files/huge.cab"
    store.record_too_big(key_of(old, a_too_big), a_too_big, "alpha", 10**12, None, None, now=T0)
    b_key = sight(store, old, "http://b.example/y.cab")

    new = write_rules(tmp_path, alpha_volatile='"token", "v"', name="new")
    lines = collect(store, new, now=T0 + 5)

    assert len(lines) == 1
    assert "alpha (volatile_params)" in lines[0] and "beta" not in lines[0]
    assert "retired 2 record(s) and 1 queued job(s)" in lines[0]
    assert store.get(a_key) is None
    assert not store.expandable(a_key)
    assert store.get(key_of(old, a_too_big)) is None
    assert store.expandable(b_key)
    assert [job.key for job in store.jobs()] == [b_key]
    (event,) = store.retirements()
    assert (event.class_name, event.kind, event.at) == ("alpha", "key_scheme", T0 + 5)
    assert (event.changed, event.records, event.jobs) == (("volatile_params",), 2, 1)
    recorded = store.key_schemes()
    assert recorded is not None and recorded["alpha"] == class_schemes(new)["alpha"]
    # Started again with the same rules: nothing left to do, nothing logged.
    assert collect(store, new, now=T0 + 6) == []
    assert len(store.retirements()) == 1


def test_demand_of_a_retired_class_is_forgotten_and_other_demand_kept(
    store: StateStore, tmp_path: Path
) -> None:
    """Demand counted under the old scheme's keys goes with the class's records: a new scheme
    may make the same key for other content, which must not start with borrowed demand."""
    old = write_rules(tmp_path, name="old")
    collect(store, old)
    demanded = {}
    for url in ("http://a.example/files/p.psf", "http://b.example/q.psf"):
        match = old.match(url)
        assert match is not None
        assert not store.record_demand(
            match.key, url, match.cls.name, 1000, None, None,
            client="10.0.0.1", first=0, last=9, clients_needed=4, fraction=0.9, now=T0,
        )  # fmt: skip
        demanded[match.cls.name] = match.key
    assert store.demand(demanded["alpha"]) is not None

    new = write_rules(tmp_path, alpha_volatile='"token", "v"', name="new")
    collect(store, new, now=T0 + 5)

    assert store.demand(demanded["alpha"]) is None
    kept = store.demand(demanded["beta"])
    assert kept is not None and kept.clients == ("10.0.0.1",)


def test_no_job_of_a_retired_class_is_handed_out(store: StateStore, tmp_path: Path) -> None:
    old = write_rules(tmp_path, name="old")
    collect(store, old)
    sight(store, old, "http://a.example/files/x.cab")
    collect(store, write_rules(tmp_path, alpha_volatile="", name="new"))
    assert store.take_job("p", 30, now=T0 + 200) is None
    assert store.queue_length() == 0


def test_lease_holder_of_a_retired_job_loses_it(store: StateStore, tmp_path: Path) -> None:
    old = write_rules(tmp_path, name="old")
    collect(store, old)
    sight(store, old, "http://a.example/files/x.cab")
    job = store.take_job("p", 300, now=T0)
    assert job is not None
    collect(store, write_rules(tmp_path, alpha_volatile="", name="new"), now=T0 + 1)
    with pytest.raises(LeaseLostError):
        store.renew(job, lease_seconds=300, bytes_filled=10, now=T0 + 2)


def test_lowered_size_limit_rejudges_instead_of_retiring(store: StateStore, tmp_path: Path) -> None:
    old = write_rules(tmp_path, alpha_max="1 GiB", name="old")
    collect(store, old)
    big = sight(store, old, "http://a.example/files/big.cab", size=500 * 1024**2)
    small = sight(store, old, "http://a.example/files/small.cab", size=1024)
    lines = collect(store, write_rules(tmp_path, alpha_max="100 MiB", name="new"))

    assert len(lines) == 1 and "max_object_size changed for class(es) alpha" in lines[0]
    big_record = store.get(big)
    assert big_record is not None and big_record.state is ObjectState.TOO_BIG
    assert not store.expandable(big)
    assert store.expandable(small)
    assert [job.key for job in store.jobs()] == [small]
    (event,) = store.retirements()
    assert (event.kind, event.records, event.jobs) == ("size_limit", 1, 1)


def test_raised_size_limit_forgets_too_big_records(store: StateStore, tmp_path: Path) -> None:
    old = write_rules(tmp_path, alpha_max="100 MiB", name="old")
    collect(store, old)
    url = "http://a.example/files/big.cab"
    store.record_too_big(key_of(old, url), url, "alpha", 500 * 1024**2, None, None, now=T0)
    collect(store, write_rules(tmp_path, alpha_max="1 GiB", name="new"))
    assert store.get(key_of(old, url)) is None  # the next ranged miss is judged afresh


def test_retirement_spans_many_transactions_and_counts_them_all(
    store: StateStore, tmp_path: Path
) -> None:
    old = write_rules(tmp_path, name="old")
    collect(store, old)
    count = CHUNK * 2 + 17
    for index in range(count):
        sight(store, old, f"http://a.example/files/{index}.cab")
        sight(store, old, f"http://b.example/{index}.cab")
    lines = collect(store, write_rules(tmp_path, alpha_volatile="", name="new"))
    assert f"retired {count} record(s) and {count} queued job(s)" in lines[0]
    assert {record.class_name for record in store.records()} == {"beta"}
    assert store.queue_length() == count
    (event,) = store.retirements()
    assert event.done and event.records == count


def test_records_first_seen_after_the_change_are_kept(store: StateStore, tmp_path: Path) -> None:
    old = write_rules(tmp_path, name="old")
    collect(store, old)
    url = "http://a.example/files/x.cab"
    key = key_of(old, url)
    # Written at the very time of the change, under the new scheme (its key is the same here).
    store.record_first_sight(key, url, "alpha", 10, None, None, now=T0 + 100)
    collect(store, write_rules(tmp_path, alpha_volatile="", name="new"), now=T0 + 100)
    assert store.get(key) is not None


def test_unfinished_retirement_is_finished_by_the_next_start(
    store: StateStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = write_rules(tmp_path, name="old")
    collect(store, old)
    key = sight(store, old, "http://a.example/files/x.cab")
    new = write_rules(tmp_path, alpha_volatile="", name="new")
    # The first process to start on the new rules dies right after deciding.
    with monkeypatch.context() as patched:
        patched.setattr(StateStore, "_finish_retirements", lambda self: None)
        collect(store, new)
    (event,) = store.retirements()
    assert not event.done and store.expandable(key)
    text = CliRunner().invoke(status_cmd, ["--state", store.location]).output
    assert "(unfinished: the next service start ends it)" in text

    assert collect(store, new, now=T0 + 200) == []  # not started here: not logged here
    assert store.get(key) is None
    (event,) = store.retirements()
    assert event.done and event.records == 1


def test_retirement_left_by_a_dead_process_is_taken_over(
    store: StateStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = write_rules(tmp_path, name="old")
    collect(store, old)
    key = sight(store, old, "http://a.example/files/x.cab")
    new = write_rules(tmp_path, alpha_volatile="", name="new")
    with monkeypatch.context() as patched:
        patched.setattr(StateStore, "_finish_retirements", lambda self: None)
        collect(store, new)
    # The process that took the work died holding a lease that expires a moment from now.
    store._cache.set("meta:retiring", f"dead-one {time.time() + 0.5}")
    collect(store, new)
    assert store.get(key) is None
    assert store.retirements()[0].done


def test_many_threads_guarding_at_once_retire_once(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    old = write_rules(tmp_path, name="old")
    with StateStore(state_dir) as store:
        collect(store, old)
        sight(store, old, "http://a.example/files/x.cab")
    new = write_rules(tmp_path, alpha_volatile="", name="new")
    lines: list[str] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        with StateStore(state_dir) as mine:
            barrier.wait()
            guard_key_schemes(mine, new, lines.append)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(lines) == 1
    with StateStore(state_dir) as store:
        assert len(store.retirements()) == 1


def test_unreadable_recorded_schemes_raise_state_error(tmp_path: Path) -> None:
    import diskcache  # type: ignore[import-untyped]

    state_dir = tmp_path / "state"
    StateStore(state_dir).close()
    with diskcache.Cache(str(state_dir)) as cache:
        cache.set("meta:keyschemes", '{"alpha": {"fingerprint": 3}}')
    with StateStore(state_dir) as store, pytest.raises(StateError, match="key schemes"):
        guard_key_schemes(store, write_rules(tmp_path), print)


def test_events_round_trip_and_reject_garbage() -> None:
    with pytest.raises(ValueError, match="kind"):
        decode_events(json.dumps([{"class": "a", "at": 1, "kind": "x", "changed": [],
                                   "records": 0, "jobs": 0}]))  # fmt: skip


# ------------------------------------------------------------------------- status


def test_status_shows_retired_classes(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with StateStore(state_dir) as store:
        old = write_rules(tmp_path, name="old")
        collect(store, old)
        sight(store, old, "http://a.example/files/x.cab")
        collect(store, write_rules(tmp_path, alpha_volatile="", name="new"), now=T0 + 60)

    result = CliRunner().invoke(status_cmd, ["--state-dir", str(state_dir), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)["key_schemes"]
    assert doc["recorded"] is True and sorted(doc["classes"]) == ["alpha", "beta"]
    (event,) = doc["retired"]
    assert event == {
        "class": "alpha",
        "at": T0 + 60,
        "kind": "key_scheme",
        "changed": ["volatile_params"],
        "records": 1,
        "jobs": 1,
        "limit": None,
        "detail": "",
        "done": True,
    }

    text = CliRunner().invoke(status_cmd, ["--state-dir", str(state_dir)]).output
    assert "key schemes: recorded for 2 class(es); 1 retirement(s) on record" in text
    assert "alpha  retired 2023-11-14 22:14:20 UTC" in text
    assert "key scheme changed (volatile_params); 1 record(s), 1 job(s) dropped" in text


def test_status_before_any_service_started(tmp_path: Path) -> None:
    StateStore(tmp_path / "state").close()
    result = CliRunner().invoke(status_cmd, ["--state-dir", str(tmp_path / "state")])
    assert "key schemes: not recorded yet" in result.output


def test_channel_add_guards_before_queueing(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    old = write_rules(tmp_path, name="old")
    with StateStore(state_dir) as store:
        collect(store, old)
        stale = sight(store, old, "http://a.example/files/x.cab?token=1&v=1")
    new_path = tmp_path / "new.toml"
    new_path.write_text(RULES.format(alpha_volatile='"token", "v"', alpha_max="1 GiB"))
    url = "http://a.example/files/y.cab"
    result = CliRunner().invoke(
        channel_group, ["add", "--state-dir", str(state_dir), "--rules", str(new_path), url]
    )
    assert result.exit_code == 0, result.output
    assert "warning: state dir" in result.output and "alpha (volatile_params)" in result.output
    with StateStore(state_dir) as store:
        assert store.get(stale) is None
        assert [job.url for job in store.jobs()] == [url]


def test_schemes_without_networks_are_as_before() -> None:
    """The new fields join a scheme only with networks: upgrading retires nothing (the DO pack
    turns connected_cache on, which alone changes no key)."""
    do = load_rules().by_name("delivery-optimization")
    assert do is not None and do.rule.connected_cache
    assert set(scheme_fields(do.rule)) == {
        "version",
        "key_host_suffix",
        "caseless_groups",
        "hosts",
        "schemes",
        "path",
        "allow_ip_literals",
        "key",
        "volatile_params",
    }
