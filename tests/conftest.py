import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


_CUDA_SUITE = "test_cuda_simulator.py::test_cuda_suite_under_the_simulator"


def pytest_collection_modifyitems(session, config, items):
    # The CUDA suite under the simulator runs in a process of its own: start it now and
    # check it last, so it overlaps the rest of the suite (tests/test_cuda_simulator.py).
    suite = [item for item in items if item.nodeid.endswith(_CUDA_SUITE)]
    if suite and not config.option.collectonly:
        items.remove(suite[0])
        items.append(suite[0])
        from test_cuda_simulator import start_cuda_suite
        start_cuda_suite()


def pytest_sessionfinish(session, exitstatus):
    module = __import__("sys").modules.get("test_cuda_simulator")
    if module is not None:
        module.stop_cuda_suite()
