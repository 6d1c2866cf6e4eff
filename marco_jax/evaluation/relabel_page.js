// The relabeling page's behaviour (marco_jax/evaluation/relabel_page.py inlines this file).
// Everything runs in the page: no server, no network. The candidates come from the JSON block
// #data; the expert's choices live in `corrections` (kept in this browser's localStorage until
// saved) and leave as the dataset builder's corrected_labels.csv (`filename,label` rows).
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("data").textContent);
  const classes = data.classes;
  const items = data.items;
  const PAGE_SIZE = data.page_size;
  const storageKey = "marco-relabel:" + data.key;
  const corrections = new Map(); // filename -> class chosen by the expert
  let shown = items; // the candidates under the current filter
  let page = 0;
  let current = -1; // index into `shown` of the selected candidate
  let unsaved = false;

  const $ = (id) => document.getElementById(id);
  const grid = $("grid");
  const viewer = $("viewer");
  const full = $("full");

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function restore() {
    try {
      const kept = JSON.parse(localStorage.getItem(storageKey) || "{}");
      const known = new Set(items.map((item) => item.filename));
      for (const [filename, label] of Object.entries(kept)) {
        if (known.has(filename) && classes.includes(label)) corrections.set(filename, label);
      }
    } catch (error) {
      // No storage (private mode, a file:// policy): corrections live until the page closes.
    }
    unsaved = corrections.size > 0;
  }

  function persist() {
    try {
      localStorage.setItem(storageKey, JSON.stringify(Object.fromEntries(corrections)));
    } catch (error) {
      // See restore().
    }
  }

  // ------------------------------------------------------------------ filter and pages

  function pairKey(item) {
    return item.label + "|" + item.predicted;
  }

  function fillFilter() {
    const filter = $("filter");
    const pairs = new Map();
    for (const item of items) pairs.set(pairKey(item), (pairs.get(pairKey(item)) || 0) + 1);
    const options = [
      ["all", "all candidates (" + items.length + ")"],
      ["todo", "not labelled yet"],
      ["done", "labelled"],
    ];
    const byCount = [...pairs.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    for (const [key, count] of byCount) {
      const [label, predicted] = key.split("|");
      options.push(["pair:" + key, "label " + label + " \u2192 predicted " + predicted +
                    " (" + count + ")"]);
    }
    for (const [value, text] of options) {
      const option = element("option", "", text);
      option.value = value;
      filter.appendChild(option);
    }
    filter.addEventListener("change", () => {
      applyFilter(filter.value);
      filter.blur(); // digits are shortcuts again, not option searches
    });
  }

  function applyFilter(value) {
    if (value === "todo") shown = items.filter((item) => !corrections.has(item.filename));
    else if (value === "done") shown = items.filter((item) => corrections.has(item.filename));
    else if (value.startsWith("pair:")) shown = items.filter((i) => "pair:" + pairKey(i) === value);
    else shown = items;
    page = 0;
    current = shown.length ? 0 : -1;
    render();
  }

  function pageCount() {
    return Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
  }

  function render() {
    grid.replaceChildren();
    const start = page * PAGE_SIZE;
    shown.slice(start, start + PAGE_SIZE).forEach((item, k) => grid.appendChild(card(item, start + k)));
    $("page").textContent = "page " + (page + 1) + " of " + pageCount() +
      " (" + shown.length + " shown)";
    $("prev").disabled = page === 0;
    $("next").disabled = page + 1 >= pageCount();
    highlight();
    updateCounts();
  }

  // ------------------------------------------------------------------ cards

  function probabilities(item) {
    const table = element("table", "probs");
    item.probs.forEach((p, c) => {
      const row = table.insertRow();
      row.insertCell().textContent = classes[c];
      row.insertCell().textContent = (100 * p).toFixed(1) + " %";
      const bar = element("div", "bar");
      bar.style.width = (100 * p).toFixed(0) + "%";
      row.insertCell().appendChild(bar);
    });
    return table;
  }

  function classButtons(index) {
    const buttons = element("div", "buttons");
    classes.forEach((name, c) => {
      const button = element("button", "label-button", (c + 1) + " " + name);
      button.type = "button";
      button.dataset.label = name;
      button.addEventListener("click", (event) => {
        event.stopPropagation();
        select(index);
        setLabel(index, name);
      });
      buttons.appendChild(button);
    });
    return buttons;
  }

  function card(item, index) {
    const node = element("div", "card");
    node.dataset.index = index;
    node.dataset.filename = item.filename;
    const picture = element("img", "thumb");
    picture.src = item.thumb;
    picture.alt = item.filename;
    picture.loading = "lazy";
    picture.title = "full size (Enter)";
    picture.addEventListener("click", () => {
      select(index);
      openViewer();
    });
    node.appendChild(picture);
    node.appendChild(element("div", "name", "#" + item.rank + " " + item.filename));
    node.appendChild(element("div", "", "split " + item.split + ", source " + item.source));
    const verdict = element("div");
    verdict.append("label ", element("b", "", item.label), " (" + item.original + "), predicted ",
                   element("b", "", item.predicted));
    node.appendChild(verdict);
    node.appendChild(element("div", "", "disagreement " + item.disagreement.toFixed(3)));
    node.appendChild(probabilities(item));
    node.appendChild(classButtons(index));
    node.appendChild(element("div", "status"));
    node.addEventListener("click", () => select(index));
    showState(node, item);
    return node;
  }

  function showState(node, item) {
    const chosen = corrections.get(item.filename);
    node.classList.toggle("labelled", chosen !== undefined);
    node.classList.toggle("changed", chosen !== undefined && chosen !== item.label);
    for (const button of node.querySelectorAll(".label-button")) {
      button.classList.toggle("chosen", button.dataset.label === chosen);
    }
    const status = node.querySelector(".status");
    if (status) {
      status.textContent = chosen === undefined ? "" :
        chosen === item.label ? "\u2713 label confirmed" : "\u2192 relabelled " + chosen;
    }
  }

  function cardNode(index) {
    return grid.querySelector('.card[data-index="' + index + '"]');
  }

  // ------------------------------------------------------------------ selection and labels

  function highlight() {
    for (const node of grid.querySelectorAll(".card.selected")) node.classList.remove("selected");
    const node = cardNode(current);
    if (node) {
      node.classList.add("selected");
      node.scrollIntoView({block: "nearest"});
    }
  }

  function select(index) {
    if (index < 0 || index >= shown.length) return;
    current = index;
    const wanted = Math.floor(index / PAGE_SIZE);
    if (wanted !== page) {
      page = wanted;
      render();
    } else {
      highlight();
    }
    if (!viewer.hidden) showInViewer();
  }

  function setLabel(index, label) {
    const item = shown[index];
    if (label === null) corrections.delete(item.filename);
    else corrections.set(item.filename, label);
    unsaved = true;
    persist();
    const node = cardNode(index);
    if (node) showState(node, item);
    if (!viewer.hidden) showInViewer();
    updateCounts();
  }

  function updateCounts() {
    let changed = 0;
    for (const item of items) {
      const chosen = corrections.get(item.filename);
      if (chosen !== undefined && chosen !== item.label) changed += 1;
    }
    $("counts").textContent = corrections.size + " of " + items.length + " labelled, " +
      changed + " relabelled" + (unsaved ? " (not saved yet)" : "");
  }

  // ------------------------------------------------------------------ full-size viewer

  function openViewer() {
    if (current < 0) return;
    viewer.hidden = false;
    showInViewer();
  }

  function closeViewer() {
    viewer.hidden = true;
    full.removeAttribute("src");
  }

  function showInViewer() {
    const item = shown[current];
    full.src = item.image;
    full.alt = item.filename;
    full.classList.add("fit");
    $("viewer-name").textContent = "#" + item.rank + " " + item.filename + ": label " +
      item.label + ", predicted " + item.predicted + " (" +
      item.probs.map((p, c) => classes[c] + " " + (100 * p).toFixed(1) + " %").join(", ") + ")";
    const buttons = $("viewer-buttons");
    buttons.replaceChildren(...classButtons(current).childNodes);
    showState(viewer, item);
  }

  // ------------------------------------------------------------------ saving

  function csvCell(text) {
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function correctionsCsv() {
    const rows = [...corrections.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    return "filename,label\n" + rows.map(([f, label]) => csvCell(f) + "," + label + "\n").join("");
  }

  function save() {
    const link = element("a");
    link.href = URL.createObjectURL(new Blob([correctionsCsv()], {type: "text/csv"}));
    link.download = data.csv_name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    unsaved = false;
    updateCounts();
    $("saved").textContent = "Saved " + corrections.size + " rows as " + data.csv_name +
      " (your browser's downloads folder).";
  }

  // ------------------------------------------------------------------ keys

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.target.tagName === "SELECT") {
      return;
    }
    const key = event.key;
    const digit = Number.parseInt(key, 10);
    if (digit >= 1 && digit <= classes.length && current >= 0) {
      setLabel(current, classes[digit - 1]);
      select(current + 1);
    } else if ((key === "0" || key === "Backspace" || key === "Delete") && current >= 0) {
      setLabel(current, null);
    } else if (key === "ArrowRight" || key === "j") {
      select(current + 1);
    } else if (key === "ArrowLeft" || key === "k") {
      select(current - 1);
    } else if (key === "Enter" || key === " ") {
      openViewer();
    } else if (key === "Escape") {
      closeViewer();
    } else {
      return;
    }
    event.preventDefault();
  });

  window.addEventListener("beforeunload", (event) => {
    if (unsaved && corrections.size) event.preventDefault();
  });

  $("save").addEventListener("click", save);
  $("prev").addEventListener("click", () => select(Math.max(0, (page - 1) * PAGE_SIZE)));
  $("next").addEventListener("click", () => select((page + 1) * PAGE_SIZE));
  $("close").addEventListener("click", closeViewer);
  full.addEventListener("click", () => full.classList.toggle("fit"));

  restore();
  fillFilter();
  applyFilter("all");
})();
