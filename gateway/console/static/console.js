/* Tailor console: charts from JSON specs, confirmation dialogs, chart refresh after htmx swaps.
 *
 * No inline scripts or handlers anywhere (the pages are served with a strict CSP): each
 * chart is a <canvas data-chart="ID"> whose spec sits in <script type="application/json"
 * id="ID">, written by gateway/console/views.py; each form with data-confirm asks first.
 */
(function () {
  "use strict";

  // Okabe-Ito: told apart by people with any common colour-vision deficiency.
  var PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8C6D1F"];

  function color(i) {
    return PALETTE[i % PALETTE.length];
  }

  function config(spec) {
    var line = spec.type === "line";
    var datasets = spec.datasets.map(function (d, i) {
      return {
        label: d.label,
        data: d.data,
        borderColor: color(i),
        backgroundColor: line ? color(i) : color(i) + "CC",
        borderWidth: line ? 2 : 1,
        pointRadius: line && spec.labels.length > 40 ? 0 : 3,
        spanGaps: false,
        tension: 0
      };
    });
    var y = { stacked: spec.stacked, title: { display: !!spec.y_label, text: spec.y_label } };
    if (spec.y_min !== null && spec.y_min !== undefined) { y.min = spec.y_min; }
    if (spec.y_max !== null && spec.y_max !== undefined) { y.max = spec.y_max; }
    return {
      type: spec.type,
      data: { labels: spec.labels, datasets: datasets },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        plugins: { legend: { position: "bottom" } },
        scales: {
          x: { stacked: spec.stacked, title: { display: !!spec.x_label, text: spec.x_label } },
          y: y
        }
      }
    };
  }

  function renderCharts(root) {
    if (typeof window.Chart === "undefined") { return; }
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var source = document.getElementById(canvas.dataset.chart);
      if (!source) { return; }
      var existing = window.Chart.getChart(canvas);
      if (existing) { existing.destroy(); }
      new window.Chart(canvas, config(JSON.parse(source.textContent)));
    });
  }

  function destroyCharts(root) {
    if (typeof window.Chart === "undefined") { return; }
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var chart = window.Chart.getChart(canvas);
      if (chart) { chart.destroy(); }
    });
  }

  // --- confirmation: a native <dialog>, so focus, Escape and the backdrop behave -----------
  function setUpConfirm() {
    var dialog = document.getElementById("confirm-dialog");
    if (!dialog || typeof dialog.showModal !== "function") { return; }  // no dialog: plain submit
    var message = document.getElementById("confirm-message");
    var pending = null;

    document.addEventListener("submit", function (event) {
      var form = event.target;
      if (!(form instanceof HTMLFormElement) || !form.dataset.confirm) { return; }
      if (form.dataset.confirmed === "yes") { return; }
      event.preventDefault();
      pending = form;
      message.textContent = form.dataset.confirm;
      dialog.returnValue = "";  // Escape closes without a value: nothing happens
      dialog.showModal();
    });

    dialog.addEventListener("close", function () {
      var form = pending;
      pending = null;
      if (form && dialog.returnValue === "confirm") {
        form.dataset.confirmed = "yes";
        form.requestSubmit();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    renderCharts(document);
    setUpConfirm();
  });
  document.addEventListener("htmx:beforeSwap", function (event) { destroyCharts(event.detail.target); });
  document.addEventListener("htmx:afterSettle", function (event) { renderCharts(event.detail.elt); });
})();
