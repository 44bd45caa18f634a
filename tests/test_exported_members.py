import subprocess
import sys

import aiofranka


def test_all_is_sorted_and_complete():
    assert aiofranka.__all__ == sorted(aiofranka.__all__)
    for name in aiofranka.__all__:
        assert getattr(aiofranka, name) is not None
    public = {name for name in dir(aiofranka) if not name.startswith("_")}
    assert public <= set(aiofranka.__all__) | {"annotations", "importlib", "TYPE_CHECKING", "exceptions", "probe", "stats"}


def test_the_names_of_aiofranka_0_9_are_the_same_objects():
    from aiofranka import async_utils

    assert aiofranka.FrankaController is aiofranka.Controller
    assert async_utils.__all__ == sorted(async_utils.__all__)
    assert set(async_utils.__all__) == {"CudaInferenceThread", "ampify", "async_input", "asyncify", "mpify"}
    for name in async_utils.__all__:
        assert getattr(async_utils, name) is getattr(aiofranka, name)


def test_async_utils_imports_its_helpers_on_first_use():
    code = (
        "import sys\n"
        "from aiofranka.async_utils import asyncify\n"
        "heavy = ('torch', 'pylibfranka', 'aiofranka.offload.to_process', 'aiofranka.offload.cuda')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "from aiofranka.async_utils import CudaInferenceThread, mpify\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines() == ["[]", "['aiofranka.offload.cuda', 'aiofranka.offload.to_process']"]
