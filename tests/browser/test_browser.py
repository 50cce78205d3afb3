"""Notebook 05 in JupyterLab in a real (headless) Chromium, used the way a learner uses it.

A JupyterLab server is started on localhost with a token in throw-away Jupyter folders; Debian's
Chromium is driven through its own chromedriver (Selenium Manager downloads nothing). The test opens
notebook 05 on a copy of a finished tiny run with `interactive = True`, runs all cells from the Run menu,
then picks another prompt and another model in the answer viewer and checks the shown answers against
eval/answers.jsonl, and asks the chat box a question and checks the reply is the GGUF's. A screenshot of
every step goes to artifacts/browser/. The server's process group is killed at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from empathy_workbook.paths import ARTIFACTS_DIR, NOTEBOOKS_DIR

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
RUN = "ci-browser"
QUESTION = "I slipped on the wet bathroom floor yesterday and now I'm afraid to shower alone."
SHOTS = ARTIFACTS_DIR / "browser"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]
# JupyterLab settings for a quiet, fully rendered page: no news/update toasts over the menu, and every
# cell kept in the DOM (windowing would drop cells that are scrolled out of view).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, every: float = 0.5):
    """Poll check() until it returns something truthy; fail naming what did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def workspace(tiny_run, tmp_path_factory):
    """A server root holding notebook 05 with run_name and interactive set, on a fresh copy of the run."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from empathy_workbook.pipeline.guide import fork_run

    paths = fork_run(tiny_run.root.name, RUN, through="export")
    shutil.rmtree(paths.root / "eval", ignore_errors=True)
    root = tmp_path_factory.mktemp("lab")
    # papermill's loader gives every cell the metadata.tags list its parameterizer expects
    nb = parameterize_notebook(load_notebook_node(str(NOTEBOOKS_DIR / "05_evaluate.ipynb")),
                               {"preset": "tiny", "run_name": RUN, "interactive": True})
    nbformat.write(nb, root / "05_evaluate.ipynb")
    return root, paths


@pytest.fixture(scope="module")
def lab(workspace, tmp_path_factory):
    """(url of the notebook, log path): a JupyterLab server, stopped with its whole process group at the end."""
    root, _ = workspace
    home = tmp_path_factory.mktemp("jupyter")
    for name, values in LAB_SETTINGS.items():
        path = home / "config" / "lab" / "user-settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ,
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTER_DATA_DIR=str(home / "data"),
               # the venv's python3 kernel first, whatever kernels the user has elsewhere
               JUPYTER_PATH=os.pathsep.join(filter(None, [str(Path(sys.prefix) / "share" / "jupyter"),
                                                          os.environ.get("JUPYTER_PATH")])))
    port, token = free_port(), secrets.token_hex(16)
    log = home / "server.log"
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
               f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}"]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up():
            if server.poll() is not None:
                raise AssertionError(f"jupyter lab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(up, 120, "the JupyterLab server to answer")
        yield f"http://127.0.0.1:{port}/lab/tree/05_evaluate.ipynb?token={token}", log
    finally:
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(server.pid, sig)  # the kernel is in the same group
            except ProcessLookupError:
                break
            try:
                server.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def text_of(element) -> str:
    return element.get_attribute("textContent") or ""


def click_menu(driver, menu: str, item: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//div[contains(@class,'lm-MenuBar-itemLabel') and text()='{menu}']").click()
    wait_until(lambda: driver.find_elements(
        By.XPATH, f"//div[contains(@class,'lm-Menu-itemLabel') and text()='{item}']"), 10, f"menu item {item!r}")[0].click()


def shown_cards(driver) -> dict | None:
    """Model → answer text of the cards the viewer shows now, and their prompt id (None while it re-renders)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        block = driver.find_element(By.CSS_SELECTOR, ".ew-answers .ew-prompt")
        cards = {card.get_attribute("data-model"): text_of(card.find_element(By.CSS_SELECTOR, ".ew-answer-text"))
                 for card in block.find_elements(By.CSS_SELECTOR, ".ew-answer")}
        return {"prompt_id": block.get_attribute("data-prompt-id"), "cards": cards}
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def test_notebook_05_in_jupyterlab(lab, workspace, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from empathy_workbook.config import load_config
    from empathy_workbook.io import read_jsonl
    from empathy_workbook.models.loading import load_tokenizer
    from empathy_workbook.ui import GGUFChat

    url, log = lab
    _, paths = workspace
    driver = browser
    driver.get(url)
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 120, "the notebook to open")
    wait_until(lambda: "Idle" in text_of(driver.find_element(By.CSS_SELECTOR, "#jp-main-statusbar")), 120,
               "the kernel to start (status bar: Idle)")
    assert "05 · Evaluate" in text_of(driver.find_element(By.CSS_SELECTOR, ".jp-Notebook"))
    shot(driver, "01_opened")

    # Step 1: Run ▸ Run All Cells, as a learner would; wait for the last cell's finish line.
    click_menu(driver, "Run", "Run All Cells")
    notebook = driver.find_element(By.CSS_SELECTOR, ".jp-Notebook")
    wait_until(lambda: "phase 'eval' done in" in text_of(notebook), 900, "all cells to finish", every=2)
    assert (paths.root / "eval" / "metrics.json").exists(), f"notebook did not finish; server log: {log}"
    assert "Traceback" not in text_of(notebook)
    answers = read_jsonl(paths.root / "eval" / "answers.jsonl")
    by_key = {(r["model"], r["prompt_id"]): r for r in answers}
    models = list(dict.fromkeys(r["model"] for r in answers))
    assert models == ["base", "sft", "dpo", "gguf"]
    viewer = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, ".ew-viewer"), 60, "the answer viewer")[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", viewer)
    first = wait_until(lambda: shown_cards(driver), 30, "the viewer's cards")
    assert set(first["cards"]) == set(models)
    shot(driver, "02_ran_all")

    # Step 2: pick another prompt; the cards must switch to that prompt's rows of answers.jsonl.
    prompt_picker = Select(viewer.find_element(By.CSS_SELECTOR, ".ew-prompt-picker select"))
    assert len(prompt_picker.options) == len({r["prompt_id"] for r in answers})
    prompt_picker.select_by_index(len(prompt_picker.options) - 3)
    picked = wait_until(lambda: (s := shown_cards(driver)) and s["prompt_id"] != first["prompt_id"] and s, 30,
                        "the viewer to show the picked prompt")
    question = by_key[("dpo", picked["prompt_id"])]["question"]
    assert question[:60] in prompt_picker.first_selected_option.text
    assert question in text_of(viewer.find_element(By.CSS_SELECTOR, ".ew-answers"))
    for model in models:
        assert picked["cards"][model] == by_key[(model, picked["prompt_id"])]["answer"], model
    shot(driver, "03_prompt_picked")

    # Step 3: pick one model; only its answer to the same prompt stays.
    model_picker = Select(viewer.find_element(By.CSS_SELECTOR, ".ew-model-picker select"))
    model_picker.select_by_visible_text("sft")
    only = wait_until(lambda: (s := shown_cards(driver)) and s["cards"].keys() == {"sft"} and s, 30,
                      "the viewer to show only the sft answer")
    assert only["prompt_id"] == picked["prompt_id"]
    assert only["cards"]["sft"] == by_key[("sft", picked["prompt_id"])]["answer"]
    shot(driver, "04_model_picked")

    # Step 4: type a question into the chat box; the reply must be the GGUF's (same file, template, seed).
    chat = driver.find_element(By.CSS_SELECTOR, ".ew-chat")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", chat)
    box = chat.find_element(By.CSS_SELECTOR, ".ew-chat-input input")
    box.click()
    box.send_keys(QUESTION + Keys.ENTER)
    log_box = chat.find_element(By.CSS_SELECTOR, ".ew-chat-log")
    turn = wait_until(lambda: log_box.find_elements(By.CSS_SELECTOR, ".ew-turn"), 180, "a reply in the chat box")[0]
    cfg = load_config("tiny")
    expected = GGUFChat(paths.root / "export" / "model-q4_k_m.gguf", load_tokenizer(str(paths.root / "dpo" / "merged")),
                        cfg.data.system_prompt, cfg.eval.sampling, cfg.eval.n_threads).reply(QUESTION)
    assert text_of(turn.find_element(By.CSS_SELECTOR, ".ew-user")) == QUESTION
    reply = text_of(turn.find_element(By.CSS_SELECTOR, ".ew-reply"))
    assert reply.strip() and reply == expected["text"]
    shot(driver, "05_chat_answered")
    assert sorted(p.name for p in SHOTS.glob("0*.png")) == [
        "01_opened.png", "02_ran_all.png", "03_prompt_picked.png", "04_model_picked.png", "05_chat_answered.png"]
