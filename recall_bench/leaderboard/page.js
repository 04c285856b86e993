// recall_bench leaderboard page: sortable, filterable tables per track, and downloads of
// what is shown. Plain JavaScript written for this package; no libraries, no network.
"use strict";
(function () {
  const ROWS = JSON.parse(document.getElementById("rows").textContent);
  const META = JSON.parse(document.getElementById("meta").textContent);
  // filter name -> row field
  const FILTERS = [["mode", "mode"], ["size", "params"], ["dtype", "dtype"],
                   ["device", "device"], ["converged", "converged"]];
  const chosen = {};  // filter name -> chosen value ("" = all)
  const sorting = {};  // track -> {key, dir}

  function fmt(v) {
    if (v === null || v === undefined) return "-";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 1e5 ? v.toExponential(3) : v.toPrecision(4);
  }

  function metricCell(row, name) {
    const s = row.metrics[name];
    if (!s) return "-";
    if (row.n_seeds < 2) return fmt(s.mean);
    return fmt(s.mean) + " [" + fmt(s.min) + "\u2013" + fmt(s.max) + "]";
  }

  function columns(track) {
    const text = (key, label) => ({ key: key, label: label, text: true,
                                     value: r => r[key], show: r => String(r[key]) });
    const num = (key, label) => ({ key: key, label: label, text: false,
                                   value: r => r[key], show: r => fmt(r[key]) });
    const metric = (name, label) => ({
      key: name, label: label, text: false,
      value: r => (r.metrics[name] ? r.metrics[name].mean : null),
      show: r => metricCell(r, name) });
    const cols = [text("mode", "mode"), num("n_facts", "facts"), num("params", "params"),
                  text("dtype", "dtype")];
    META.tracks[track].columns.forEach(c => cols.push(metric(c[1], c[0])));
    cols.push(metric("general_accuracy_kept", "general kept"));
    cols.push(num("steps", "steps"), num("n_seeds", "seeds"), text("converged", "converged"),
              text("device", "device"));
    return cols;
  }

  function shownRows() {
    return ROWS.filter(r => FILTERS.every(
      ([name, field]) => !chosen[name] || String(r[field]) === chosen[name]));
  }

  function compare(col, dir) {
    return (a, b) => {
      const x = col.value(a), y = col.value(b);
      if (x === null || x === undefined) return (y === null || y === undefined) ? 0 : 1;
      if (y === null || y === undefined) return -1;  // missing values last either way
      const c = col.text ? String(x).localeCompare(String(y)) : x - y;
      return dir === "asc" ? c : -c;
    };
  }

  function recordLinks(row) {
    const cell = document.createElement("td");
    cell.className = "text";
    const seeds = row.seeds.split(";");
    row.records.split(";").forEach((path, i) => {
      if (!path) return;
      const a = document.createElement("a");
      a.href = path;
      a.textContent = "seed " + seeds[i];
      cell.appendChild(a);
      cell.appendChild(document.createTextNode(" "));
    });
    return cell;
  }

  function renderTable(track, rows) {
    const cols = columns(track);
    const sort = sorting[track] || { key: null, dir: "desc" };
    if (sort.key) {
      const col = cols.find(c => c.key === sort.key);
      rows = rows.slice().sort(compare(col, sort.dir));
    }
    const table = document.createElement("table");
    table.id = "table-" + track;
    const head = table.createTHead().insertRow();
    cols.forEach(col => {
      const th = document.createElement("th");
      th.textContent = col.label;
      th.dataset.key = col.key;
      if (col.text) th.className = "text";
      if (sort.key === col.key) th.classList.add("sorted-" + sort.dir);
      th.addEventListener("click", () => {
        const dir = sort.key === col.key && sort.dir === "desc" ? "asc" : "desc";
        sorting[track] = { key: col.key, dir: dir };
        render();
      });
      head.appendChild(th);
    });
    const th = document.createElement("th");
    th.textContent = "records";
    th.className = "text";
    head.appendChild(th);
    const body = table.createTBody();
    rows.forEach(row => {
      const tr = body.insertRow();
      tr.dataset.group = row.group;
      tr.dataset.mode = row.mode;
      cols.forEach(col => {
        const td = tr.insertCell();
        td.textContent = col.show(row);
        if (col.text) td.className = "text";
      });
      tr.appendChild(recordLinks(row));
    });
    return table;
  }

  function render() {
    const shown = shownRows();
    const root = document.getElementById("tables");
    root.textContent = "";
    Object.keys(META.tracks).forEach(track => {
      if (!ROWS.some(r => r.track === track)) return;
      const rows = shown.filter(r => r.track === track);
      const h = document.createElement("h2");
      h.textContent = META.tracks[track].title + " (" + rows.length + " rows shown)";
      root.appendChild(h);
      root.appendChild(renderTable(track, rows));
    });
    updateDownloads(shown);
  }

  function csvCell(v) {
    if (v === null || v === undefined) return "";
    const s = String(v);
    return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function toCSV(rows) {
    const lines = [META.csv_header.map(csvCell).join(",")];
    rows.forEach(row => {
      const flat = {};
      META.fields.forEach(f => { flat[f] = row[f]; });
      Object.keys(row.metrics).forEach(m => {
        ["mean", "min", "max"].forEach(s => { flat[m + "_" + s] = row.metrics[m][s]; });
      });
      lines.push(META.csv_header.map(h => csvCell(flat[h])).join(","));
    });
    return lines.join("\n") + "\n";
  }

  function updateDownloads(shown) {
    document.getElementById("download-csv").href =
      "data:text/csv;charset=utf-8," + encodeURIComponent(toCSV(shown));
    document.getElementById("download-json").href =
      "data:application/json;charset=utf-8," + encodeURIComponent(JSON.stringify(shown));
  }

  function buildFilters() {
    const form = document.getElementById("filters");
    FILTERS.forEach(([name, field]) => {
      const values = Array.from(new Set(ROWS.map(r => r[field])));
      values.sort((a, b) => (typeof a === "number" ? a - b : String(a).localeCompare(b)));
      const label = document.createElement("label");
      label.textContent = name + " ";
      const select = document.createElement("select");
      select.id = "filter-" + name;
      [["", "all"], ...values.map(v => [String(v), fmt(v)])].forEach(([value, text]) => {
        const option = document.createElement("option");
        option.value = value;
        option.textContent = text;
        select.appendChild(option);
      });
      select.addEventListener("change", () => { chosen[name] = select.value; render(); });
      label.appendChild(select);
      form.appendChild(label);
    });
  }

  buildFilters();
  render();
  window.leaderboardPage = { toCSV: toCSV, shownRows: shownRows };
})();
