import aiofranka


def test_all_is_sorted_and_complete():
    assert aiofranka.__all__ == sorted(aiofranka.__all__)
    for name in aiofranka.__all__:
        assert getattr(aiofranka, name) is not None
    public = {name for name in dir(aiofranka) if not name.startswith("_")}
    assert public <= set(aiofranka.__all__) | {"annotations", "importlib", "TYPE_CHECKING", "exceptions", "probe", "stats"}
