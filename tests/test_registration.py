import importlib
import pathlib
import subprocess

import pytest
from peft import PeftConfig, PeftType
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

import mdpd_peft
from conftest import tiny_mdpd_model

ENUM_EXTENSION = pathlib.Path(mdpd_peft.__file__).with_name("enum_extension.py")


def test_import_registers_mdpd():
    assert PeftType.MDPD == "MDPD"
    assert PeftType("MDPD") is PeftType.MDPD is PeftType["MDPD"]
    assert PeftType.MDPD in list(PeftType)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.MDPD] is mdpd_peft.MDPDConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.MDPD] is mdpd_peft.MDPDModel
    assert issubclass(mdpd_peft.MDPDModel, __import__("peft").tuners.tuners_utils.BaseTuner)


def test_reimport_is_safe():
    importlib.reload(mdpd_peft)
    mdpd_peft.register()
    model = tiny_mdpd_model()
    assert isinstance(model.base_model, mdpd_peft.MDPDModel)


def test_peft_config_from_pretrained(tmp_path):
    config = mdpd_peft.MDPDConfig(task_type="SEQ_CLS", reduction_factor=4, mask_ratio=0.25)
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, mdpd_peft.MDPDConfig)
    assert (loaded.peft_type, loaded.reduction_factor, loaded.mask_ratio) == (PeftType.MDPD, 4, 0.25)


PYENV = pathlib.Path.home() / ".pyenv" / "versions"
OTHER_PYTHONS = sorted(PYENV.glob("3.1[0-9]*/bin/python")) if PYENV.exists() else []


@pytest.mark.skipif(not OTHER_PYTHONS, reason="no pyenv interpreters on this machine")
@pytest.mark.parametrize("python", OTHER_PYTHONS, ids=lambda p: p.parent.parent.name)
def test_enum_extension_on_every_python(python):
    """The enum trick PEFT registration needs, on each installed Python >= 3.10 (3.12 changed member lookup)."""
    script = f"""
import enum, importlib.util
spec = importlib.util.spec_from_file_location("ext", {str(ENUM_EXTENSION)!r})
ext = importlib.util.module_from_spec(spec); spec.loader.exec_module(ext)
class T(str, enum.Enum):
    A = "A"
m = ext.add_str_enum_member(T, "NEW")
assert ext.add_str_enum_member(T, "NEW") is m
assert T.NEW is m and T["NEW"] is m and T("NEW") is m and m in list(T) and m == "NEW" and m.name == "NEW"
print("ok")
"""
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
