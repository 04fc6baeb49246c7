// The pcamflow endpoint's page: show a patch (centre 32x32 outlined), send it to
// /invocations, and show the predicted class with its confidence as a bar.
// Everything is served by the endpoint itself: no network access beyond it.
"use strict";

const SUPPORTED = ["image/jpeg", "image/png"];
const DESCRIPTIONS = { "0": "no tumour", "1": "tumour (metastasis)" };
let classes = ["0", "1"];

const $ = (id) => document.getElementById(id);

function setState(state, message) {
  document.body.dataset.state = state;
  $("status").textContent = message || "";
}

function describe(label) {
  return DESCRIPTIONS[label] ? `${DESCRIPTIONS[label]} (class ${label})` : `class ${label}`;
}

async function loadInfo() {
  try {
    const reply = await fetch("/info", { headers: { Accept: "application/json" } });
    if (!reply.ok) throw new Error(`${reply.status}`);
    const info = await reply.json();
    classes = info.classes;
    $("model").textContent =
      `endpoint: ${info.name} · ${info.architecture} · input ${info.image_shape.join("x")}`;
  } catch (error) {
    $("model").textContent = "endpoint: model description unavailable";
  }
}

function drawPatch(blob) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(blob);
    const image = new Image();
    image.onload = () => {
      const canvas = $("patch");
      const context = canvas.getContext("2d");
      const scale = Math.min(canvas.width / image.width, canvas.height / image.height);
      const width = image.width * scale;
      const height = image.height * scale;
      const left = (canvas.width - width) / 2;
      const top = (canvas.height - height) / 2;
      context.clearRect(0, 0, canvas.width, canvas.height);
      context.imageSmoothingEnabled = false;
      context.drawImage(image, left, top, width, height);
      // the centre third of the patch: 32x32 pixels of a 96x96 PCam patch
      const side = Math.min(width, height) / 3;
      context.setLineDash([6, 4]);
      context.lineWidth = 2;
      context.strokeStyle = "#ffd400";
      context.strokeRect(left + (width - side) / 2, top + (height - side) / 2, side, side);
      URL.revokeObjectURL(url);
      resolve();
    };
    image.onerror = () => {
      URL.revokeObjectURL(url);
      reject(new Error("the browser cannot show this file as an image"));
    };
    image.src = url;
  });
}

function showPrediction(probabilities) {
  let best = 0;
  probabilities.forEach((p, i) => { if (p > probabilities[best]) best = i; });
  const label = classes[best] !== undefined ? classes[best] : String(best);
  const confidence = probabilities[best];
  $("predicted").textContent = describe(label);
  const fill = $("fill");
  fill.className = "fill " + (label === "1" ? "tumour" : "normal");
  fill.style.width = `${(confidence * 100).toFixed(2)}%`;
  $("bar").setAttribute("aria-valuenow", (confidence * 100).toFixed(1));
  $("confidence").textContent = `confidence: ${(confidence * 100).toFixed(1)} %`;
  const body = $("probabilities").querySelector("tbody");
  body.replaceChildren(...probabilities.map((p, i) => {
    const row = document.createElement("tr");
    const name = document.createElement("td");
    const value = document.createElement("td");
    name.textContent = classes[i] !== undefined ? classes[i] : String(i);
    value.textContent = p.toFixed(4);
    row.append(name, value);
    return row;
  }));
}

async function predict(blob) {
  setState("loading", "predicting…");
  try {
    await drawPatch(blob);
  } catch (error) {
    // the server decides what it can decode; the preview is only a courtesy
  }
  const type = SUPPORTED.includes(blob.type) ? blob.type : "application/x-image";
  try {
    const reply = await fetch("/invocations", {
      method: "POST",
      headers: { "Content-Type": type, Accept: "application/json" },
      body: blob,
    });
    const answer = await reply.json();
    if (!reply.ok) {
      const kind = reply.headers.get("x-amzn-ErrorType") || reply.status;
      throw new Error(`${kind}: ${answer.message || reply.statusText}`);
    }
    showPrediction(answer);
    setState("done", "");
  } catch (error) {
    setState("error", error.message);
  }
}

async function fromParameter() {
  // ?image=<data: URL or a path on this server>, for links and for automated checks
  const source = new URLSearchParams(window.location.search).get("image");
  if (!source) return;
  const url = new URL(source, window.location.href);
  if (url.protocol !== "data:" && url.origin !== window.location.origin) {
    setState("error", "?image= must be a data: URL or a path on this server");
    return;
  }
  try {
    const reply = await fetch(url);
    if (!reply.ok) throw new Error(`cannot fetch ${source}: ${reply.status}`);
    await predict(await reply.blob());
  } catch (error) {
    setState("error", error.message);
  }
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) predict(file);
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) predict(file);
  });
}

wire();
loadInfo().then(fromParameter);
