from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, DownloadConfig, build_config, load_settings


def test_flat_settings_fill_nested_configs() -> None:
    cfg = build_config(
        DownloadConfig,
        {
            "image-size": "64",
            "allow_networks": "127.0.0.0/8, 10.0.0.0/8",
            "respect_robots": "yes",
            "threads": 3,
        },
    )
    assert cfg.image.image_size == 64
    assert cfg.fetch.allow_networks == ("127.0.0.0/8", "10.0.0.0/8")
    assert cfg.fetch.respect_robots is True
    assert cfg.threads == 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"imagesize": 3}, "unknown setting(s): imagesize"),
        ({"image_size": "big"}, "image_size must be a int"),
        ({"resize_mode": "stretch"}, "resize_mode must be one of"),
        ({"encode_format": "gif"}, "encode_format must be one of"),
        ({"allow_networks": "10.0.0.0/33"}, "not a CIDR"),
        ({"respect_robots": "maybe"}, "respect_robots must be true or false"),
        ({"samples_per_shard": 0}, "samples_per_shard must be positive"),
        ({"timeout": -1}, "timeout must be positive"),
    ],
)
def test_bad_settings_name_the_setting(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config(DownloadConfig, settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"image_size": True}, "image_size must be a int, got True"),
        ({"threads": False}, "threads must be a int, got False"),
        ({"timeout": True}, "timeout must be a float, got True"),
    ],
)
def test_a_bool_is_no_number(settings: dict, message: str, tmp_path: Path) -> None:
    # ``image_size = true`` in a file once became 1: 1-pixel images.
    with pytest.raises(ConfigError, match=message):
        build_config(DownloadConfig, settings)
    toml = tmp_path / "c.toml"
    name, value = next(iter(settings.items()))
    toml.write_text(f"{name} = {str(value).lower()}\n")
    with pytest.raises(ConfigError, match=message):
        build_config(DownloadConfig, load_settings(toml))


def test_a_bool_is_no_number_in_the_overlap_settings() -> None:
    from pipeline.overlap.config import OverlapConfig

    with pytest.raises(ConfigError, match="top_k must be a int, got True"):
        build_config(OverlapConfig, {"top_k": True})
    with pytest.raises(ConfigError, match="precision must be a float, got True"):
        build_config(OverlapConfig, {"precision": True})


def test_toml_and_yaml_files(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('image_size = 128\nresize_mode = "center_crop"\n[fetch]\nretries = 5\n')
    yaml = tmp_path / "c.yaml"
    yaml.write_text("image-size: 128\nresize-mode: center_crop\nretries: 5\n")
    for path in (toml, yaml):
        cfg = build_config(DownloadConfig, load_settings(path))
        assert (cfg.image.image_size, cfg.image.resize_mode, cfg.fetch.retries) == (
            128,
            "center_crop",
            5,
        )


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("image_size = = 3")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_settings(bad)
    ini = tmp_path / "c.ini"
    ini.write_text("x=1")
    with pytest.raises(ConfigError, match=r"must be \.toml"):
        load_settings(ini)


def test_every_setting_has_help_and_is_documented() -> None:
    from pipeline.config import HELP, iter_settings
    from pipeline.spark.build import BuildConfig

    doc = (Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md").read_text()
    for name, _ in iter_settings(DownloadConfig) + iter_settings(BuildConfig):
        assert name in HELP, f"{name} has no help text"
        assert f"`{name.replace('_', '-')}`" in doc, f"{name} missing from docs/CONFIG.md"


@pytest.mark.parametrize(
    ("script", "module"),
    [
        ("wit-download", "pipeline.download"),
        ("wit-overlap", "pipeline.overlap"),
        ("wit-synthweb", "pipeline.synthweb"),
    ],
)
def test_usage_names_the_command_that_runs(script: str, module: str) -> None:
    import subprocess
    import sys

    installed = Path(sys.executable).parent / script
    if not installed.exists():
        pytest.skip(f"{script} is not installed in this environment")
    as_script = subprocess.run([str(installed), "--help"], capture_output=True, text=True)
    as_module = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True
    )
    assert as_script.returncode == 0 and as_module.returncode == 0
    assert as_script.stdout.startswith(f"usage: {script} ")
    assert as_module.stdout.startswith(f"usage: python -m {module} ")
