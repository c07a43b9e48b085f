"""The one gate for what page users name (core/access.py), and every input of a shared studio
that names a path or a URL: the Train tab's path box, dataset check and Start, the import
form, the Evaluate tab's test file and judge URL. Each hostile name is tried on each input:
``~``, ``~user``, ``..``, a symlink out of the roots, and a local folder shaped like a hub
dataset's name."""

from __future__ import annotations

import getpass
import os
import shutil
from pathlib import Path

import gradio as gr
import pytest

from core.access import Access, is_hub_name
from core.errors import StudioError
from tests.helpers import colour_rows, studio_with_toy, write_jsonl

OUTSIDE = "outside the folders datasets may be read from"


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A home with a secret, the studio's roots, a symlink out, a hub-shaped folder."""
    home = tmp_path / "someone"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    secret = write_jsonl(home / "secret.jsonl", colour_rows(20))
    (home / "secret.csv").write_text("prompt,completion\nthe password,hunter2\n")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    write_jsonl(allowed / "ok.jsonl", colour_rows(20))
    (allowed / "link.jsonl").symlink_to(secret)
    hub_shaped = tmp_path / "owner" / "name"  # "owner/name" read from the server's folder
    hub_shaped.mkdir(parents=True)
    shutil.copy(home / "secret.csv", hub_shaped / "train.csv")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORA_STUDIO_DATA_ROOTS", str(allowed))
    return allowed


def hostile_names(allowed: Path) -> list[str]:
    return [
        "~/secret.jsonl",
        "~/secret.csv",
        f"~{getpass.getuser()}/secret.jsonl",
        str(allowed / ".." / "someone" / "secret.jsonl"),
        str(allowed / "link.jsonl"),
        "owner/name",
        "~",
    ]


def test_the_gate_expands_and_resolves_before_it_confines(places):
    access = Access(shared=True, roots=(places,))
    for name in hostile_names(places):
        with pytest.raises(StudioError, match=OUTSIDE):
            access.source(name)
    assert access.path(places / "ok.jsonl") == (places / "ok.jsonl").resolve()
    owner = Access(shared=False)  # the owner's own studio: their files, expanded
    assert owner.path("~/secret.jsonl") == Path(os.environ["HOME"]).resolve() / "secret.jsonl"
    assert owner.source("owner/name") == str(Path("owner/name").resolve())


def test_only_a_strict_owner_name_is_a_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("HuggingFaceH4/ultrafeedback", "tatsu-lab/alpaca:default@train", "a/b@test"):
        assert is_hub_name(name), name
    for name in ("../etc", "./x", "~/x", "a/../b", "/abs/x", "a/b/c", ".hidden/x", "a b/c"):
        assert not is_hub_name(name), name
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert not is_hub_name("a/b")  # a folder of the server's is a path, not the hub's


def test_urls_on_a_shared_studio_reach_loopback_and_the_owners_hosts_only():
    shared = Access(shared=True, hosts={"judge": ("judge.lan",)})
    for url in ("http://127.0.0.1:8080/v1", "http://localhost/v1", "http://[::1]:1/v1"):
        assert shared.url(url) == url
    assert shared.url("https://judge.lan/v1")
    for url in (
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/v1",
        "http://127.0.0.1@example.com/v1",  # the host is example.com
        "http://0.0.0.0:80/v1",
    ):
        with pytest.raises(StudioError, match="only loopback addresses"):
            shared.url(url)
    with pytest.raises(StudioError, match="only loopback"):
        shared.url("http://judge.lan/v1", "teacher")  # listed for the judge only
    for url in ("file:///etc/passwd", "gopher://x", "not a url"):
        with pytest.raises(StudioError, match="not an http"):
            shared.url(url)
    assert Access(shared=False).url("http://example.com/v1")  # the owner's own studio


@pytest.fixture
def shared_studio(places, tmp_path, toy_model):
    from webapp.page.studio import Studio

    studio = Studio.open(studio_with_toy(tmp_path / "studio", toy_model), exposed=True)
    yield studio, places
    studio.close()


def test_every_path_input_of_a_shared_studio_refuses_the_hostile_names(shared_studio):
    from webapp.page.evaluate_tab import EvaluateActions
    from webapp.page.train.actions import TrainActions

    studio, allowed = shared_studio
    train, evaluate = TrainActions(studio), EvaluateActions(studio)
    for name in hostile_names(allowed):
        with pytest.raises(gr.Error, match=OUTSIDE):
            train.take_path(name)  # the import path box
        summary, _, _, why, _ = train.check_dataset("toy", name, "x.jsonl", lora_layers=-1)
        assert OUTSIDE in why and "sky" not in summary, name
        *_, refused = train.train("toy", name, "x.jsonl", "x", lora_layers=-1)  # after "starting"
        assert OUTSIDE in refused[2], name
        status = next(evaluate.start(["toy"], None, name, None, ["exact_match"], *JUDGE_NONE))
        assert OUTSIDE in status[0], name
    assert not list(studio.settings.datasets.glob("*.jsonl"))  # nothing was imported
    assert studio.training.runs.list() == []
    path, name, *_ = train.take_path(str(allowed / "ok.jsonl"))
    assert Path(path) == (allowed / "ok.jsonl").resolve() and name == "ok.jsonl"


JUDGE_NONE = ("", "", "", 16, 4)  # judge, judge URL, its model, max tokens, batch


def test_a_shared_studios_judge_url_is_refused_before_anything_is_called(shared_studio):
    from webapp.page.evaluate_tab import EvaluateActions

    studio, allowed = shared_studio
    evaluate = EvaluateActions(studio)
    test_file = str(allowed / "ok.jsonl")
    judge = ("", "http://169.254.169.254/v1", "m", 16, 4)
    status = next(evaluate.start(["toy"], None, test_file, None, ["exact_match"], *judge))
    assert "only loopback addresses" in status[0]
    assert "LORA_STUDIO_JUDGE_HOSTS" in status[0]
    assert not evaluate.store.list()  # refused before an evaluation was made


def test_the_evaluate_tabs_upload_is_stored_where_a_shared_studio_reads(shared_studio, tmp_path):
    """An upload lives in Gradio's temporary folder, outside the roots: it is stored in the
    datasets folder (by content, as the Train tab does) and keeps its name on the page."""
    from webapp.page.evaluate_tab import EvaluateActions

    studio, _ = shared_studio
    (tmp_path / "gradio-tmp").mkdir()
    rows = [{"prompt": "Sky?", "completion": "Blue."}] * 3
    upload = write_jsonl(tmp_path / "gradio-tmp" / "held-out.jsonl", rows)
    evaluate = EvaluateActions(studio)
    path, name = evaluate._test_file(str(upload), "", None)
    assert Path(path).parent == studio.settings.datasets.resolve() and name == "held-out.jsonl"


RUNS_ONLY_THE_OWNERS = "a shared studio runs only the reward files in"


def test_a_shared_studio_runs_only_the_owners_reward_files(shared_studio, tmp_path):
    """GRPO's reward files are code: from a page user (an upload, a dataset folder, any
    path) a shared studio runs none, at the check, the preview or Start; the owner's files
    in rewards/ are offered by name."""
    from webapp.page.train.actions import TrainActions

    studio, allowed = shared_studio
    train = TrainActions(studio)
    prompts = write_jsonl(allowed / "sky.jsonl", [{"prompt": f"sky {i}?"} for i in range(24)])
    uploaded = tmp_path / "gradio" / "evil.py"  # where an upload would land
    uploaded.parent.mkdir()
    uploaded.write_text("def score(prompt, completion, row):\n    return 1.0\n")
    in_data = allowed / "evil.py"  # beside the datasets a shared studio may read
    shutil.copy(uploaded, in_data)
    shutil.copy(uploaded, studio.settings.datasets / "evil.py")  # where uploads are stored
    owners = studio.settings.rewards / "owners.py"
    owners.write_text("def says_sky(prompt, completion, row):\n    return 1.0\n")
    form = dict(method="grpo", lora_layers=-1, max_completion_tokens=4)
    for name in (str(uploaded), str(in_data), "../datasets/evil.py", "~/evil.py"):
        picked = form | {"reward_file": [name]}
        *_, why, _ = train.check_dataset("toy", str(prompts), "sky.jsonl", **picked)
        assert RUNS_ONLY_THE_OWNERS in why, name
        assert RUNS_ONLY_THE_OWNERS in train.preview_rewards("toy", str(prompts), **picked)
        *_, refused = train.train("toy", str(prompts), "sky.jsonl", "x", **picked)
        assert RUNS_ONLY_THE_OWNERS in refused[2], name
    assert studio.training.runs.list() == []
    rewards, files = train.reward_choices()
    assert files["choices"] == ["owners.py"] and "says_sky" in rewards["choices"]
    *_, why, _ = train.check_dataset(
        "toy", str(prompts), "sky.jsonl", **form, reward_file=["owners.py"]
    )
    assert why.startswith("Ready"), why
    assert Access(shared=False).code(str(uploaded), studio.settings.rewards) == uploaded


def test_a_shared_studios_teacher_is_on_loopback_or_the_owners_hosts(shared_studio):
    """Make a dataset on a shared studio: a teacher URL elsewhere, documents outside the
    roots and the owner's key variables are refused before anything is asked or written."""
    from webapp.page.train.actions import TrainActions

    studio, _ = shared_studio
    teaching = TrainActions(studio).teaching
    metadata = "http://169.254.169.254/v1"
    status, *_ = next(teaching.make("x", "topics", "sea", 2, None, metadata, "m", "", None, None))
    assert "this shared studio calls no teacher at 169.254.169.254" in status
    assert "LORA_STUDIO_TEACHER_HOSTS" in status
    status, *_ = next(teaching.make("x", "docs", "~/", 2, "toy", "", "", "", None, None))
    assert OUTSIDE in status
    assert not list(studio.settings.datasets.glob(".making-*"))


def test_a_shared_studio_reports_no_page_users_run_to_wandb(shared_studio):
    """W&B would go online under the owner's login: a page user's run may report to the
    owner's TensorBoard files or MLflow store, not there."""
    from core.params import TrainingParams

    studio, _ = shared_studio
    with pytest.raises(StudioError, match="Weights & Biases under its owner's login"):
        studio.gated_params(TrainingParams(report_to=["tensorboard", "wandb"]))
    kept = studio.gated_params(TrainingParams(report_to=["tensorboard", "mlflow"]))
    assert kept.report_to == ["tensorboard", "mlflow"]
