"""The README opens with the install command, the main job and the test command; .ci/run runs exactly those."""

import re

from .conftest import REPO


def _readme_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_install_main_job_and_test_commands():
    install, main_job, test = _readme_block()[:3]
    assert "pip install torch==2.13.0" in install and 'pip install -e ".[dev]"' in install
    assert main_job == "autofeedback run pipelines/shapes.yaml"
    assert test == "python -m pytest"
    assert (REPO / "pipelines" / "shapes.yaml").exists()


def test_ci_runs_exactly_the_readme_install_and_test_commands():
    install, _main_job, test = _readme_block()[:3]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert install in ci and test in ci
