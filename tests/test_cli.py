"""The commands as users type them: help that helps, and one-line errors with exit status 2."""

import os
import subprocess
import sys

import pytest

from .conftest import ROOT, make_config


def run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys; from raft_data.cli.main import main; sys.argv[0] = 'raft-data'; main()"
    if args and args[0] == "raft-sft":
        code = "from raft_data.cli.sft import main; main()"
        args = args[1:]
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_top_level_help_lists_the_commands() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in ("generate", "score", "select", "status"):
        assert command in out.stdout


@pytest.mark.parametrize("command", ["generate", "score", "select"])
def test_each_command_explains_itself(command: str) -> None:
    out = run(command, "--help")
    assert out.returncode == 0 and "--round" in out.stdout and "section.key=value" in out.stdout


def test_raft_sft_help() -> None:
    assert "train" in run("raft-sft", "--help").stdout
    out = run("raft-sft", "train", "--help")
    assert out.returncode == 0 and "--round" in out.stdout


def test_user_errors_are_one_line_with_exit_status_2(tmp_path, tiny_model_dir, prompts_file) -> None:
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(make_config(tmp_path, tiny_model_dir, prompts_file).to_yaml())
    cases = [
        (("generate", "--config", str(cfg_path), "generate.n_samples=0"), "generate.n_samples=0"),
        (("generate", "--config", str(cfg_path), "score.rewrd=vader"), "unknown key score.rewrd"),
        (("score", "--config", str(cfg_path)), "run `raft-data generate --round 0` first"),
        (("generate", "--config", str(tmp_path / "missing.yaml")), "missing.yaml does not exist"),
        (("frobnicate",), "unknown command 'frobnicate'"),
    ]
    for args, message in cases:
        out = run(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr


@pytest.mark.parametrize("command", ["prompts", "sources", "chat"])
def test_round_tools_print_or_fail_in_one_line(command, tmp_path, tiny_model_dir, prompts_file, capsys) -> None:
    from raft_data.cli.main import main as raft_data

    def main(argv: list[str]) -> None:
        raft_data([command, "--config", *argv])

    cfg = make_config(tmp_path, tiny_model_dir, prompts_file)
    config_path = tmp_path / "exp.yaml"
    config_path.write_text(cfg.to_yaml(), encoding="utf-8")

    main([str(config_path)])
    if command != "sources":  # no extra sources configured: nothing to count
        assert len(capsys.readouterr().out.splitlines()) >= cfg.prompts.n_prompts

    for argv, message in (
        ([str(tmp_path / "missing.yaml")], "missing.yaml does not exist"),
        ([str(config_path), "prompts.n_prompts=0"], "prompts.n_prompts=0 is invalid"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err
