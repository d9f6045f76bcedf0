"""What README.md promises and shows, kept true: the main job's file as it is, the test
commands CI and the fast tier run, every link and picture there. (The main job's output
as pasted is checked against a real run in test_ordered.py.)"""

import re

from helpers import ROOT

README = (ROOT / "README.md").read_text()


def test_the_readme_shows_the_main_jobs_file_as_it_is():
    shown = README.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert shown == (ROOT / "sweeps" / "lr.yaml").read_text()
    assert "pip install -r requirements.txt\npython runner.py sweep sweeps/lr.yaml\n" in README


def test_the_test_commands_are_the_ones_ci_and_the_fast_tier_run():
    assert "```\npython -m pytest -q tests\n```" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\npython -m pytest -q tests\n" in ci
    assert '```\npython -m pytest -q -m "not slow" -n 2 tests\n```' in README


def test_every_link_and_picture_of_the_readme_and_docs_is_there():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
                 ROOT / "benchmarks" / "README.md"]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_the_readme_introduces_and_the_reference_lives_in_docs():
    assert len(README.splitlines()) <= 170
    headings = re.findall(r"^## (.+)$", README, re.MULTILINE)
    assert headings[:4] == ["Set up and run", "What you see", "Where each answer is",
                            "Where to go next"] and headings[-1] == "Test"
    assert "--storage postgresql://" in (ROOT / "docs" / "scale-out.md").read_text()
