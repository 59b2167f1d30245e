"""gpuclust.app.report: the run folder (write_run_folder, foreign_files) and the report's text."""

import pytest


def _fake_run(n_test=4):
    from conftest import fake_run

    return fake_run(n_test=n_test)


def test_a_rerun_replaces_only_what_gpuclust_wrote(tmp_path):
    from gpuclust.app.report import foreign_files, write_run_folder

    write_run_folder(_fake_run(), tmp_path)
    (tmp_path / "notes.md").write_text("mine")
    assert foreign_files(tmp_path) == []  # our own earlier run: a rerun goes ahead
    write_run_folder(_fake_run(), tmp_path)
    assert (tmp_path / "notes.md").read_text() == "mine"
    (tmp_path / "report.md").unlink()
    (tmp_path / "report.md").write_text("mine too")  # gone from the folder and back: still ours by name
    (tmp_path / "confusion_task9.png").write_bytes(b"mine")  # a name a run could write, never written by one
    assert foreign_files(tmp_path) == ["confusion_task9.png"]
    with pytest.raises(FileExistsError, match="confusion_task9.png"):
        write_run_folder(_fake_run(), tmp_path)
    assert (tmp_path / "confusion_task9.png").read_bytes() == b"mine"
    write_run_folder(_fake_run(), tmp_path, overwrite=True)
    assert (tmp_path / "confusion_task9.png").read_bytes() == b"mine"  # replaced only if this run writes it


def test_the_report_names_the_test_images_it_scored():
    from gpuclust.app.report import render_report

    report = render_report(_fake_run(n_test=50), {})
    assert "All scores on 50 held-out test images only" in report and "10,000-image" not in report
    assert "the held-out 10,000-image test set" in render_report(_fake_run(n_test=10000), {})


def test_rerun_into_the_same_folder_leaves_no_stale_plots(tmp_path):
    from conftest import fake_run

    from gpuclust.app.report import write_run_folder

    write_run_folder(fake_run(["task1_kmeans_pixels", "task3_ae_gmm_diag"], gmm=True), tmp_path)
    assert (tmp_path / "confusion_task3_ae_gmm_diag.png").is_file() and (tmp_path / "covariance_types.png").is_file()
    (tmp_path / "notes.png").write_bytes(b"mine")
    write_run_folder(fake_run(["task1_kmeans_pixels"], gmm=False), tmp_path)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["confusion_task1_kmeans_pixels.png", "loss_curve.png", "notes.png"]
    assert "covariance_types" not in (tmp_path / "report.md").read_text()


def test_the_report_names_the_variant_of_highest_modularity_as_its_label_free_choice():
    from gpuclust.app.report import render_report

    run = _fake_run()
    run["results"] = [
        {**run["results"][0], "task": task, "protocol": "inductive", "n_embedded": 10, "modularity": m,
         "cluster_accuracy": acc}
        for task, m, acc in (("task4_umap_gmm_inductive", 0.80, 0.9), ("task6_scan_inductive", 0.83, 0.6))
    ]  # fmt: skip
    text = render_report(run, {})
    assert "Chosen: **task6_scan_inductive**: cluster accuracy 0.6000" in text
    assert "task4_umap_gmm_inductive 0.8000, task6_scan_inductive 0.8300" in text
