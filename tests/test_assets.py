"""Asset fetching: a failing download or build is one AssetError line (exit 2 from the command),
and nothing half-built is left in the cache for a later run to take for complete."""

import pytest

from ftjax.assets import fetching
from ftjax.assets.math_problems import read_pairs
from ftjax.assets.registry import Asset


def _fake_asset(build):
    return Asset(package="fake-pkg", version="1.0", kind="wheel", path="out.txt",
                 description="test asset", build=build)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FTJAX_CACHE", str(tmp_path))
    monkeypatch.setattr(fetching, "_pip", lambda args, asset: None)  # no download
    return tmp_path


def _install(monkeypatch, asset):
    monkeypatch.setattr(fetching, "ASSETS", {"fake": asset})


def test_a_failing_build_is_one_asset_error_and_leaves_no_asset(cache, monkeypatch, capsys):
    def build(tree):
        raise RuntimeError("generator exited 1:\nImportError: sympy")

    _install(monkeypatch, _fake_asset(build))
    with pytest.raises(fetching.AssetError, match=r"building out.txt from fake-pkg==1.0 failed"):
        fetching.fetch("fake", quiet=True)
    assert not any((cache / "assets").iterdir())  # staging removed, no asset directory
    assert fetching.main(["fetch", "fake"]) == 2
    err = capsys.readouterr().err
    assert "\nftjax.assets: building out.txt from fake-pkg==1.0 failed" in err
    assert "Traceback" not in err


def test_a_build_that_writes_its_file_makes_the_asset(cache, monkeypatch):
    _install(monkeypatch, _fake_asset(lambda tree: (tree / "out.txt").write_text("ok")))
    path = fetching.fetch("fake", quiet=True)
    assert path.read_text() == "ok" and path.parent.name == "fake-pkg-1.0"
    assert fetching.fetch("fake", quiet=True) == path  # cached: the build does not run again


def test_a_build_that_writes_nothing_is_an_asset_error(cache, monkeypatch):
    _install(monkeypatch, _fake_asset(lambda tree: None))
    with pytest.raises(fetching.AssetError, match="does not contain out.txt"):
        fetching.fetch("fake", quiet=True)


def test_unknown_asset_names_the_known_ones(cache, monkeypatch):
    _install(monkeypatch, _fake_asset(None))
    with pytest.raises(fetching.AssetError, match="known assets: fake"):
        fetching.fetch("nope")


def test_math_generator_output_must_alternate_question_and_answer(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("What is 1 + 1?\n2\nWhat is 2 - 5?\n-3\n")
    assert read_pairs(good) == [("What is 1 + 1?", "2"), ("What is 2 - 5?", "-3")]
    bad = tmp_path / "bad.txt"
    bad.write_text("What is 1 + 1?\n2\nWhat is 2 - 5?\n")
    with pytest.raises(ValueError, match="odd number of lines"):
        read_pairs(bad)
