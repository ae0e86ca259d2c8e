"""The benchmark measures real generations of the shipped checkpoint, keeps its records exactly,
and draws its figures without a display. No assertion here is about how fast anything is."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import matplotlib
import pytest
from matplotlib.figure import Figure

from vlm_notebook import bench
from vlm_notebook.cli import DEMO_PICTURE, main
from vlm_notebook.random_checkpoints import MARKER_KEY

CAPTION = "A red circle on a white background."
QUESTION = "What shape is it?"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result() -> bench.BenchResult:
    """Two measured runs (after one warm-up) of a caption and a question on one picture."""
    return bench.run_benchmark(["shapes-smolvlm"], [DEMO_PICTURE], [None, QUESTION], runs=2, warmup=1)


@pytest.mark.timeout(120)
def test_records_round_trip_through_json_exactly(result: bench.BenchResult, tmp_path: Path) -> None:
    path = result.save(tmp_path / "results.json")
    loaded = bench.BenchResult.load(path)
    assert loaded == result, "every field, floats included, must come back as it was saved"
    assert loaded.to_json() == result.to_json()


@pytest.mark.timeout(120)
def test_the_machine_and_library_versions_are_recorded(result: bench.BenchResult) -> None:
    machine = result.machine
    assert machine.cores >= 1 and machine.cpu_model and machine.torch_threads >= 1
    assert {"torch", "transformers", "vlm-notebook"} <= set(machine.libraries)
    assert len(machine.load_average) == 3


@pytest.mark.timeout(120)
def test_every_case_has_the_asked_number_of_runs(result: bench.BenchResult) -> None:
    (model,) = result.models
    assert model.model == "shapes-smolvlm" and not model.random_weights
    expected = [(DEMO_PICTURE.name, None), (DEMO_PICTURE.name, QUESTION)]
    assert [(case.image, case.prompt) for case in model.cases] == expected
    for case in model.cases:
        assert len(case.streamed) == 2 and len(case.whole) == 2, "warm-up runs must not be recorded"


@pytest.mark.timeout(120)
def test_streamed_and_whole_runs_do_the_same_work(result: bench.BenchResult) -> None:
    caption, question = result.models[0].cases
    assert {run.text for run in caption.streamed + caption.whole} == {CAPTION}
    assert {run.text for run in question.streamed + question.whole} == {"A circle."}


@pytest.mark.timeout(120)
def test_stream_figures_are_consistent(result: bench.BenchResult) -> None:
    for run in result.models[0].streamed:
        assert run.tokens == len(run.token_times) > 0
        assert run.token_times == sorted(run.token_times)
        assert run.time_to_first_token is not None and run.time_to_first_text is not None
        assert 0 < run.time_to_first_token <= run.time_to_first_text <= run.end_to_end
        assert run.token_times[-1] <= run.end_to_end
        assert 0 < run.image_tokens < run.prompt_tokens
        assert len(run.inter_token_latencies) == run.tokens - 1
        assert run.finish_reason == "stop"


@pytest.mark.timeout(120)
def test_summary_orders_its_percentiles(result: bench.BenchResult) -> None:
    figures = bench.summary(result.models[0])
    for name, spread in figures.items():
        assert spread.p50 is not None and spread.p90 is not None, name
        assert spread.p50 <= spread.p90, name
    assert figures["time_to_first_token"].p50 <= figures["end_to_end_streamed"].p50  # type: ignore[operator]


def test_percentile_interpolates_like_numpy() -> None:
    assert bench.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert bench.percentile([5.0], 90) == 5.0
    assert bench.percentile([], 50) is None


@pytest.mark.timeout(120)
def test_table_has_one_row_per_model(result: bench.BenchResult) -> None:
    (row,) = bench.comparison_rows(result)
    assert row["model"] == "shapes-smolvlm"
    assert row["improvement (x)"] == pytest.approx(row["wait without streaming (s)"] / row["first text streaming (s)"])
    assert bench.markdown_table(result).count("\n") == 2


@pytest.mark.timeout(120)
def test_figures_render_with_the_agg_backend(result: bench.BenchResult) -> None:
    matplotlib.use("Agg")
    run = result.models[0].streamed[0]
    figures = [bench.ttft_figure(result), bench.wait_figure(result), bench.timeline_figure(run, label="caption")]
    for figure in figures:
        assert isinstance(figure, Figure)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue().startswith(PNG_MAGIC)


@pytest.mark.timeout(120)
def test_random_weights_are_named_in_every_figure_title(result: bench.BenchResult) -> None:
    marked = dataclasses.replace(result, models=[dataclasses.replace(result.models[0], random_weights=True)])
    run = marked.models[0].streamed[0]
    figures = [bench.ttft_figure(marked), bench.wait_figure(marked), bench.timeline_figure(run, random_weights=True)]
    for figure in figures:
        assert "random weights" in figure.axes[0].get_title()
    assert "random weights" in bench.markdown_table(marked)
    assert "random weights" not in bench.ttft_figure(result).axes[0].get_title()


@pytest.mark.timeout(120)
def test_the_random_weights_marker_is_read_from_config_json(tmp_path: Path) -> None:
    directory = tmp_path / "marked"
    shutil.copytree(Path(bench.registry.resolve("shapes-smolvlm").source), directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, MARKER_KEY: True}))
    assert bench.is_random_weights(bench.model_for(str(directory)))
    assert not bench.is_random_weights(bench.model_for("shapes-smolvlm"))


def test_an_unknown_random_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="No published shape"):
        bench.model_for("random:no-such-model")


@pytest.mark.timeout(180)
def test_the_command_line_writes_results_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, plot = tmp_path / "results.json", tmp_path / "ttft.png"
    argv = ["bench", "--model", "shapes-smolvlm", "--runs", "2", "--warmup", "0"]
    argv += ["--out", str(out), "--plot", str(plot)]
    assert main(argv) == 0
    loaded = bench.BenchResult.load(out)
    assert [model.model for model in loaded.models] == ["shapes-smolvlm"]
    assert len(loaded.models[0].streamed) == 2
    assert loaded.command is not None and "bench" in loaded.command
    assert plot.read_bytes().startswith(PNG_MAGIC)
    assert "| shapes-smolvlm |" in capsys.readouterr().out
