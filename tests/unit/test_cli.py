"""The console script: help works without heavy imports; unknown commands fail clearly."""

import subprocess
import sys

from nudgeserve.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for name, _, _ in COMMANDS:
        assert name in out


def test_every_command_has_help(capsys):
    for name, _, _ in COMMANDS:
        try:
            main([name, "--help"])
        except SystemExit as exc:
            assert exc.code == 0
        assert name in capsys.readouterr().out


def test_unknown_command_exits_2(capsys):
    try:
        main(["frobnicate"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_top_level_help_does_not_import_torch_or_ray():
    code = (
        "import sys; from nudgeserve.cli import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\n"
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, "
        "[m for m in ('torch', 'ray') if m in sys.modules]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
