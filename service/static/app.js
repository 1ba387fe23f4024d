// The tagging page: choose or drop a file, POST it to /v1/tag, draw the answer.
// Plain DOM code, no build step. The optional API key lives in sessionStorage.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("tag-form");
  const fileInput = $("file-input");
  const dropZone = $("drop-zone");
  const submit = $("submit");
  const statusLine = $("status");
  const errorBox = $("error");
  const modelSelect = $("model-select");
  const apiKeyInput = $("api-key");
  let chosenFile = null;
  let ready = false;

  apiKeyInput.value = sessionStorage.getItem("audio_dcls_api_key") || "";
  if (apiKeyInput.value) $("api-key-label").hidden = false;
  apiKeyInput.addEventListener("change", () => {
    sessionStorage.setItem("audio_dcls_api_key", apiKeyInput.value);
    loadModels();
  });

  function authHeaders() {
    const key = apiKeyInput.value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  function setStatus(text, state) {
    statusLine.textContent = text;
    statusLine.dataset.state = state;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error) return body.error.message + " (" + response.status + " " + body.error.code + ")";
    } catch (e) { /* not JSON */ }
    return "HTTP " + response.status;
  }

  function updateSubmit() {
    submit.disabled = !(ready && chosenFile);
  }

  async function loadModels() {
    try {
      const r = await fetch("/v1/models", { headers: authHeaders() });
      if (r.status === 401) {
        $("api-key-label").hidden = false;
        setStatus("this server needs an API key", "error");
        ready = false;
      } else if (r.status === 503) {
        setStatus("the server is loading its models…", "loading");
        ready = false;
        setTimeout(loadModels, 2000);
      } else if (!r.ok) {
        setStatus(await errorMessage(r), "error");
        ready = false;
      } else {
        const body = await r.json();
        modelSelect.replaceChildren();
        for (const m of body.models) {
          const opt = document.createElement("option");
          opt.value = m.name;
          opt.textContent = m.name + " (" + m.arch + ")";
          if (m.name === body.default) opt.selected = true;
          modelSelect.appendChild(opt);
        }
        setStatus("ready — " + body.models.length + " model" + (body.models.length === 1 ? "" : "s"), "ready");
        ready = body.models.length > 0;
      }
    } catch (e) {
      setStatus("cannot reach the server: " + e.message, "error");
      ready = false;
      setTimeout(loadModels, 3000);
    }
    updateSubmit();
  }

  function chooseFile(file) {
    chosenFile = file || null;
    $("file-name").textContent = chosenFile ? chosenFile.name + " (" + Math.round(chosenFile.size / 1024) + " KiB)" : "";
    showError("");
    updateSubmit();
  }

  fileInput.addEventListener("change", () => chooseFile(fileInput.files[0]));
  for (const ev of ["dragenter", "dragover"]) {
    dropZone.addEventListener(ev, (e) => { e.preventDefault(); dropZone.classList.add("dragover"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    dropZone.addEventListener(ev, (e) => { e.preventDefault(); dropZone.classList.remove("dragover"); });
  }
  dropZone.addEventListener("drop", (e) => {
    if (e.dataTransfer && e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
  });
  dropZone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fileInput.click(); }
  });

  function formatTime(s) {
    const m = Math.floor(s / 60);
    const sec = s - m * 60;
    return m + ":" + sec.toFixed(1).padStart(4, "0");
  }

  function tagRow(tag, className) {
    const row = document.createElement("li");
    row.className = className;
    row.dataset.mid = tag.mid;
    row.dataset.score = String(tag.score);
    const name = document.createElement("span");
    name.className = "tag-name";
    name.textContent = tag.name;
    name.title = tag.mid ? tag.name + " " + tag.mid : tag.name;
    const track = document.createElement("div");
    track.className = "bar-track";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = (Math.max(0, Math.min(1, tag.score)) * 100).toFixed(1) + "%";
    track.appendChild(bar);
    const score = document.createElement("span");
    score.className = "tag-score";
    score.textContent = tag.score.toFixed(3);
    row.append(name, track, score);
    return row;
  }

  function render(result) {
    const tags = $("tags");
    tags.replaceChildren(...result.tags.map((t) => tagRow(t, "tag")));
    $("summary").textContent =
      result.filename + " — " + result.duration_s.toFixed(2) + " s, " + result.num_windows + " window" +
      (result.num_windows === 1 ? "" : "s") + ", model " + result.model + ", " + Math.round(result.timing.total_ms) + " ms";
    const timeline = $("timeline");
    timeline.replaceChildren();
    for (const w of result.windows) {
      const row = document.createElement("div");
      row.className = "window";
      row.dataset.start = String(w.start_s);
      row.dataset.end = String(w.end_s);
      const time = document.createElement("span");
      time.className = "window-time";
      time.textContent = formatTime(w.start_s) + "–" + formatTime(w.end_s);
      const list = document.createElement("ul");
      list.className = "window-tags";
      list.style.listStyle = "none";
      list.style.padding = "0";
      list.style.margin = "0";
      for (const t of w.tags.slice(0, 3)) list.appendChild(tagRow(t, "window-tag"));
      row.append(time, list);
      timeline.appendChild(row);
    }
    $("result-panel").hidden = false;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!chosenFile) return;
    showError("");
    submit.disabled = true;
    submit.textContent = "Tagging…";
    const data = new FormData();
    data.append("file", chosenFile, chosenFile.name);
    if (modelSelect.value) data.append("model", modelSelect.value);
    data.append("top_k", $("top-k").value || "10");
    data.append("window_s", $("window-s").value || "10");
    data.append("hop_s", $("hop-s").value || "5");
    try {
      const r = await fetch("/v1/tag", { method: "POST", body: data, headers: authHeaders() });
      if (!r.ok) {
        if (r.status === 401) $("api-key-label").hidden = false;
        showError(await errorMessage(r));
      } else {
        render(await r.json());
      }
    } catch (err) {
      showError("the request failed: " + err.message);
    } finally {
      submit.textContent = "Tag";
      updateSubmit();
    }
  });

  loadModels();
})();
