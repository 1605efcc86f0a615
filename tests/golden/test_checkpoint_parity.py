"""The original code's checkpoints load."""

import sys
import types

import torch

from kp2d.models.keypoint_net import load_keypoint_net


def test_original_checkpoint_with_yacs_config_loads_without_yacs(tmp_path, golden_forward, monkeypatch):
    module, cfg_node = _fake_yacs_cfgnode()
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    params = cfg_node(use_color=True, do_upsample=True, do_cross=True, with_io=True)
    config = cfg_node(model=cfg_node(params=params))
    config.__dict__["__immutable__"] = True  # yacs keeps its flags in the instance dict
    path = tmp_path / "v4.ckpt"
    torch.save({"config": config, "state_dict": golden_forward["state_dict"]}, path)
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")

    net = load_keypoint_net(path)
    assert not net.training and net.do_upsample and net.do_cross
    with torch.no_grad():
        out = net.describe(golden_forward["image"])
    torch.testing.assert_close(out.desc, golden_forward["v4"]["desc"], atol=1e-4, rtol=0)


def _fake_yacs_cfgnode():
    """A class pickled as ``yacs.config.CfgNode`` (a dict subclass, as yacs has it), yacs not needed."""
    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__ = "yacs.config"
    CfgNode.__qualname__ = "CfgNode"
    module.CfgNode = CfgNode
    return module, CfgNode
