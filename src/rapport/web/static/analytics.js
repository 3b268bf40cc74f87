// Analytics pages: PNG export of the chart and the funnel's "Add step".
(function () {
  "use strict";
  // PNG export straight from the chart (ECharts renders it; nothing goes to the server):
  // <button data-png="chart-element-id" data-name="file.png">
  document.addEventListener("click", function (e) {
    var id = e.target.getAttribute && e.target.getAttribute("data-png");
    if (!id || !window.echarts) return;
    var chart = echarts.getInstanceByDom(document.getElementById(id));
    if (!chart) return;
    var a = document.createElement("a");
    a.href = chart.getDataURL({type: "png", pixelRatio: 2, backgroundColor: "#fff"});
    a.download = e.target.getAttribute("data-name");
    document.body.appendChild(a);
    a.click();
    a.remove();
  });
  // the funnel's "Add step": a copy of the last step row, emptied
  document.addEventListener("click", function (e) {
    if (!e.target.matches || !e.target.matches("#add-step")) return;
    var rows = document.querySelectorAll(".step-row");
    var copy = rows[rows.length - 1].cloneNode(true);
    copy.querySelectorAll("input").forEach(function (i) { i.value = ""; });
    rows[rows.length - 1].after(copy);
  });
})();
