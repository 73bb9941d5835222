// The try-it page: one POST /v1/segment?format=json per run; the label map is painted here from
// the JSON's COCO RLE masks, so the picture, the legend and the API answer are the same data.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, image: null, manifest: null, version: null, busy: false, again: false };

function apiHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

async function errorText(response) {
  // The gateway answers {"error": code, "detail": text}; anything else is shown as it came.
  const raw = await response.text();
  try {
    const body = JSON.parse(raw);
    return `${response.status} ${body.error || ""}: ${body.detail || raw}`;
  } catch {
    return `${response.status}: ${raw.slice(0, 300)}`;
  }
}

// COCO compressed RLE (pycocotools' rleFrString): counts of alternating 0/1 runs, column-major.
function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0, k = 0, more = true, c = 0;
    while (more) {
      c = text.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x -= 2 ** (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

function paintLabels(labels, classes, width, height) {
  for (const cls of classes) {
    const counts = rleCounts(cls.rle.counts);
    let pos = 0;
    for (let i = 0; i < counts.length; i += 1) {
      if (i % 2 === 1) {
        for (let j = pos; j < pos + counts[i]; j += 1) {
          const x = Math.floor(j / height), y = j - x * height;
          labels[y * width + x] = cls.index;
        }
      }
      pos += counts[i];
    }
  }
}

function render(body) {
  const { width, height } = body;
  const manifest = state.manifest;
  const labels = new Uint8Array(width * height);
  paintLabels(labels, body.classes, width, height);

  const input = $("input-canvas");
  input.width = width;
  input.height = height;
  const inputCtx = input.getContext("2d");
  inputCtx.drawImage(state.image, 0, 0, width, height);
  const photo = inputCtx.getImageData(0, 0, width, height).data;

  const labelCanvas = $("labels-canvas");
  const overlayCanvas = $("overlay-canvas");
  for (const c of [labelCanvas, overlayCanvas]) { c.width = width; c.height = height; }
  const labelImage = new ImageData(width, height);
  const overlayImage = new ImageData(width, height);
  const background = manifest.background_index;
  for (let i = 0; i < labels.length; i += 1) {
    const colour = manifest.palette[labels[i]];
    const o = 4 * i;
    for (let ch = 0; ch < 3; ch += 1) {
      labelImage.data[o + ch] = colour[ch];
      // As the API's overlay: half image, half class colour; background pixels as they were.
      overlayImage.data[o + ch] = labels[i] === background
        ? photo[o + ch] : Math.round(0.5 * photo[o + ch] + 0.5 * colour[ch]);
    }
    labelImage.data[o + 3] = 255;
    overlayImage.data[o + 3] = 255;
  }
  labelCanvas.getContext("2d").putImageData(labelImage, 0, 0);
  overlayCanvas.getContext("2d").putImageData(overlayImage, 0, 0);
  renderUncertainty(body.uncertainty_map, width, height);
  renderTables(body, width * height);
}

// The uncertainty map comes at the network's output size over the image's content: drawn
// stretched to the image's size, as the scores are mapped back.
function renderUncertainty(uri, width, height) {
  const canvas = $("uncertainty-canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.dataset.painted = "no";
  if (!uri) return;
  const picture = new Image();
  picture.onload = () => {
    canvas.getContext("2d").drawImage(picture, 0, 0, width, height);
    canvas.dataset.painted = "yes";
  };
  picture.src = uri;
}

function swatch(index) {
  const [r, g, b] = state.manifest.palette[index];
  const span = document.createElement("span");
  span.className = "swatch";
  span.style.background = `rgb(${r}, ${g}, ${b})`;
  return span;
}

function nameCell(name) {
  const span = document.createElement("span");
  span.className = "name";
  span.textContent = name;
  return span;
}

function renderTables(body, total) {
  const legend = $("legend");
  legend.replaceChildren();
  for (const cls of [...body.classes].sort((a, b) => b.pixels - a.pixels)) {
    const li = document.createElement("li");
    li.dataset.class = cls.name;
    const share = document.createElement("span");
    share.className = "share";
    share.textContent = `${((100 * cls.pixels) / total).toFixed(1)}%`;
    li.append(swatch(cls.index), nameCell(cls.name), share);
    legend.append(li);
  }

  const list = $("probabilities");
  list.replaceChildren();
  if (!body.class_probabilities) {
    list.innerHTML = "<li class='muted'>this model has no classifier</li>";
    return;
  }
  const suppressed = new Set(body.suppressed);
  state.manifest.classes.forEach((name, index) => {
    if (index === state.manifest.background_index) return;  // never gated
    const p = body.class_probabilities[name];
    const li = document.createElement("li");
    li.dataset.class = name;
    if (suppressed.has(name)) li.classList.add("suppressed");
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    bar.append(fill);
    if (body.gated) {
      const mark = document.createElement("i");
      mark.style.left = `${100 * body.tau}%`;
      mark.title = `tau ${body.tau}`;
      bar.append(mark);
    }
    const value = document.createElement("span");
    value.className = "share";
    value.textContent = p.toFixed(2) + (suppressed.has(name) ? " suppressed" : "");
    li.append(swatch(index), nameCell(name), bar, value);
    list.append(li);
  });
}

async function loadModel() {
  const response = await fetch("v1/models", { headers: apiHeaders() });
  if (!response.ok) {
    $("model").textContent = "no model";
    if (response.status === 401) $("key-box").classList.add("needed");
    showError(await errorText(response));
    return false;
  }
  $("key-box").classList.remove("needed");
  showError("");
  const body = await response.json();
  state.manifest = body.manifest;
  state.version = String(body.served_version);
  $("model").textContent = `model version ${body.served_version}`;
  $("gate-default").textContent = `default gate: ${body.gate.on ? `tau ${body.gate.tau}` : "off"}`;
  $("gate-default").title = body.gate.why;
  const hasClassifier = body.manifest.classifier !== null;
  $("gate").checked = hasClassifier && body.gate.on;
  $("gate").disabled = !hasClassifier;
  if (body.gate.on) $("tau").value = body.gate.tau;
  syncTau();
  return true;
}

function syncTau() {
  $("tau").disabled = !$("gate").checked;
  $("tau-value").textContent = Number($("tau").value).toFixed(2);
}

async function segment() {
  if (!state.file) return;
  if (state.busy) { state.again = true; return; }
  if (!state.manifest && !(await loadModel())) return;
  state.busy = true;
  $("results").dataset.state = "running";
  $("status").textContent = "segmenting...";
  const params = new URLSearchParams({ format: "json", uncertainty: "true" });
  if ($("gate").checked) params.set("tau", $("tau").value);
  else params.set("gate", "false");
  const form = new FormData();
  form.append("file", state.file, state.file.name || "pasted.png");
  const start = performance.now();
  try {
    const response = await fetch(`v1/segment?${params}`, {
      method: "POST", body: form, headers: apiHeaders(),
    });
    const elapsed = performance.now() - start;
    if (!response.ok) {
      if (response.status === 401) $("key-box").classList.add("needed");
      showError(await errorText(response));
      $("results").dataset.state = "error";
      $("status").textContent = "";
      return;
    }
    const body = await response.json();
    if (String(body.model_version) !== state.version) {
      await loadModel();  // a new version was published meanwhile: its classes and palette
    }
    showError("");
    render(body);
    $("model").textContent = `model version ${body.model_version}`;
    const gate = body.gated ? `gated at tau ${body.tau}` : "ungated";
    $("status").textContent = `${Math.round(elapsed)} ms, ${body.width}x${body.height}, ${gate}`;
    $("results").dataset.state = "done";
  } catch (exc) {
    showError(`request failed: ${exc.message}`);
    $("results").dataset.state = "error";
  } finally {
    state.busy = false;
    if (state.again) { state.again = false; segment(); }
  }
}

function takeFile(file) {
  if (!file) return;
  state.file = file;
  $("file-name").textContent = `${file.name || "pasted image"} (${file.size < 1024 ? `${file.size} bytes` : `${Math.round(file.size / 1024)} KiB`})`;
  const url = URL.createObjectURL(file);
  const image = new Image();
  image.onload = () => { state.image = image; segment(); };
  // Not decodable here: still send it, so the server's own error says what is wrong.
  image.onerror = () => { state.image = null; segmentWithoutPreview(); };
  image.src = url;
}

async function segmentWithoutPreview() {
  state.image = document.createElement("canvas");  // a blank stand-in for the preview
  await segment();
}

function wire() {
  $("file").addEventListener("change", (e) => takeFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    takeFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const file = [...e.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) takeFile(file);
  });
  $("tau").addEventListener("input", syncTau);
  $("tau").addEventListener("change", segment);  // on release: one request per setting
  $("gate").addEventListener("change", () => { syncTau(); segment(); });
  const key = $("api-key");
  key.value = localStorage.getItem("s4seg-api-key") || "";
  key.addEventListener("change", async () => {
    localStorage.setItem("s4seg-api-key", key.value.trim());
    if (await loadModel()) segment();
  });
  loadModel();
}

wire();
