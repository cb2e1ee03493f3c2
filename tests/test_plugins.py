"""The plugin registry: entry-point discovery, name clashes, broken plugins, helpful refusals.

Third-party distributions are made real on a temporary ``sys.path`` entry (a package plus
its ``*.dist-info`` with ``entry_points.txt``), which is exactly what ``importlib.metadata``
reads for an installed package; ``plugins.refresh()`` forgets the previous discovery.
"""

import sys
import textwrap

import pytest

from atm_fl import plugins
from atm_fl.config import ConfigError


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A function that installs a one-module distribution under ``tmp_path`` (on sys.path)."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(dist: str, module: str, code: str, entry_points: dict[str, str]) -> None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(code))
        info = tmp_path / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        eps = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{plugins.MERGE_GROUP}]\n{eps}")
        plugins.refresh()

    yield install
    for name in [m for m in sys.modules if m.startswith("tp_")]:
        del sys.modules[name]
    monkeypatch.undo()
    plugins.refresh()


HALVE = """
    from atm_fl.plugins import MergeMethod, Param
    halve = MergeMethod("halve", lambda v, ctx, scale: scale * sum(v) / len(v),
                        (Param("scale", 0.5, "factor"),), "half the mean")
    mean = MergeMethod("mean", lambda v, ctx: v[0], (), "an impostor")
    wrong = MergeMethod("other-name", lambda v, ctx: v[0], (), "")
    raise_on_import = None
"""


def test_builtins_are_found_through_their_entry_points():
    assert set(plugins.merge_methods()) >= {"mean", "sum", "ties", "breadcrumbs", "dare"}
    assert plugins.plugin_problems() == {}


def test_an_installed_package_adds_a_method_by_name(site):
    site("tp-halve", "tp_halve", HALVE, {"halve": "tp_halve:halve"})
    method, params = plugins.resolve_merge("halve", "scale=0.25")
    assert params == {"scale": 0.25} and "halve" in plugins.merge_methods()


def test_a_name_clash_is_refused_naming_both_sources(site):
    site("tp-clash", "tp_clash", HALVE, {"mean": "tp_clash:mean"})
    with pytest.raises(ConfigError) as err:
        plugins.resolve_merge("mean")
    msg = str(err.value)
    assert "strategies.merge_methods.mean:mean" in msg and "tp_clash:mean" in msg and "uninstall" in msg
    assert "mean" not in plugins.merge_methods() and "ties" in plugins.merge_methods()  # others keep working
    assert "clash" in plugins.plugin_problems()[plugins.MERGE_GROUP]["mean"]


def test_a_broken_plugin_is_reported_and_does_not_break_the_others(site):
    site("tp-broken", "tp_broken", "raise ImportError('no torch_scatter here')\n",
         {"broken": "tp_broken:thing", })
    assert "ties" in plugins.merge_methods()
    with pytest.raises(ConfigError, match="cannot be loaded.*torch_scatter"):
        plugins.resolve_merge("broken")
    assert "torch_scatter" in plugins.plugin_problems()[plugins.MERGE_GROUP]["broken"]


def test_entry_point_name_must_match_the_object(site):
    site("tp-wrong", "tp_wrong", HALVE, {"misnamed": "tp_wrong:wrong"})
    with pytest.raises(ConfigError, match="other-name"):
        plugins.resolve_merge("misnamed")


def test_unknown_method_suggests_the_closest_and_lists_all():
    with pytest.raises(ConfigError) as err:
        plugins.resolve_merge("meen")
    msg = str(err.value)
    assert "merge-method" in msg and "'meen'" in msg and "did you mean 'mean'" in msg
    for name in ("sum", "ties", "breadcrumbs", "dare"):
        assert name in msg


def test_register_refuses_an_existing_name():
    with pytest.raises(ConfigError, match="already exists"):
        plugins.register(plugins.MergeMethod("ties", lambda v, ctx: v[0]))


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        plugins.resolve_merge("ties", "densty=0.1")
    assert "did you mean 'density'" in str(err.value) and "density (default 0.2)" in str(err.value)
