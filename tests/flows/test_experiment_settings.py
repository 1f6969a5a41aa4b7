"""Relaxer specifications of the stability experiment: DFT path, protocol, DFT defaults."""

from __future__ import annotations

from flows.experiment_steps import dft_relaxer_spec
from flows.protocol_settings import protocol_spec, with_protocol


def test_dft_paths_name_the_relaxer() -> None:
    name, settings = dft_relaxer_spec("chgnet", {"fmax": 0.1}, "espresso", {"kspacing": 0.4})
    assert name == "chgnet+espresso"
    assert settings == {
        "chgnet": {"fmax": 0.1},
        "espresso": {"conv_thr_per_atom": 1e-8, "timeout_s": 2400.0, "kspacing": 0.4},
        "initial_single_point": True,
    }
    name, settings = dft_relaxer_spec("chgnet", {"fmax": 0.1}, "espresso", None, "direct")
    assert name == "espresso"  # no force-field pre-relax: pw.x from the generated structure
    assert settings == {"conv_thr_per_atom": 1e-8, "timeout_s": 2400.0}


def test_the_dataset_protocol_is_the_default_and_can_be_overridden() -> None:
    assert protocol_spec("carbon_24", None) == "carbon_24"
    assert protocol_spec("carbon_24", {"pressure_gpa": 0}) == {
        "pressure_gpa": 0,
        "dataset": "carbon_24",
    }
    assert protocol_spec("carbon_24", "perov_5") == "perov_5"
    assert protocol_spec("my_set", None) is None  # no defaults for an unknown dataset
    assert with_protocol({"fmax": 0.1}, "carbon_24") == {"fmax": 0.1, "protocol": "carbon_24"}
    given = {"protocol": {"pressure_gpa": 5}}
    assert with_protocol(given, "carbon_24") == given  # the relaxer's own protocol wins
    assert with_protocol(None, None) == {}
