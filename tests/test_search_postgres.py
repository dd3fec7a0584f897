"""Two `lottery search` workers sharing one study on a real PostgreSQL server started by the fixture.

Skips when no PostgreSQL server binaries exist, unless LOTTERY_REQUIRE_POSTGRES=1 (set by .ci/run),
in which case a missing server is a failure.
"""
import importlib.util
import os
from contextlib import ExitStack

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tests.postgres import PostgresUnavailable, postgres_server
from tests.search_helpers import start_worker, write_experiment

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.slow


def unavailable(reason: str):
    if os.environ.get("LOTTERY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"LOTTERY_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


def start_postgres(stack: ExitStack):
    if importlib.util.find_spec("psycopg2") is None:  # the driver the tests' postgresql+psycopg2 URLs use
        unavailable("psycopg2 is not installed (pip install psycopg2-binary, part of the dev extra)")
    try:
        return stack.enter_context(postgres_server())
    except PostgresUnavailable as error:
        unavailable(str(error))


@pytest.fixture
def postgres():
    with ExitStack() as stack:
        yield start_postgres(stack)


def can_connect(url: str) -> bool:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text("select 1")).scalar() == 1
    except sqlalchemy.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def test_the_fixture_server_runs_on_localhost_and_is_stopped_afterwards():
    with ExitStack() as stack:
        server = start_postgres(stack)
        assert "@127.0.0.1:" in server.url and can_connect(server.url)
        data_dir = server.data_dir
    assert not can_connect(server.url)
    assert not data_dir.exists()


def test_two_workers_share_one_study_and_finish_exactly_the_requested_trials(tmp_path, postgres):
    experiment = write_experiment(tmp_path, steps="60it", levels=1, eval_every="30it")
    trials = 4
    plain_url = postgres.url.replace("+psycopg2", "")  # as users type it; the search picks the installed driver
    workers = [start_worker(tmp_path, experiment, plain_url, trials, "shared", f"worker{i}.log") for i in range(2)]
    try:
        codes = [worker.wait(240) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    logs = "\n".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], logs

    study = optuna.load_study(study_name="shared", storage=postgres.url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == trials, logs
    others = [t for t in study.get_trials() if t.state != TrialState.COMPLETE]
    # The only other trials allowed: ones a worker started in a race for the last slot and gave up at once.
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("surplus") for t in others), others
    assert len({t.user_attrs["worker"] for t in complete}) == 2, "both workers should have run trials"
    assert len({t.user_attrs["run_dir"] for t in complete}) == trials
