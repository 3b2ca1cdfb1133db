// Time-series charts for the marketplace's pages, on the uPlot pinned in package.json (served from
// /static/uplot/). Data come from the page's server-rendered JSON and its live events: nothing is computed here.
import uPlot from "/static/uplot/uPlot.esm.js";

const COLORS = ["#2456c6", "#d1495b", "#1b7a3d", "#f0a500", "#6a4c93", "#00798c"];

function styleSheet() {
  if (document.querySelector("link[data-uplot]")) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = "/static/uplot/uPlot.min.css";
  link.dataset.uplot = "1";
  document.head.append(link);
}

// A line chart of one or more series over time, as wide as `container` (it follows resizes).
// series: [{label, color?, unit?}]; x values are Unix seconds, shown in UTC. Returns {setData(xs, ys), push(x, values)}:
// ys is one array per series; push appends one point to every series and keeps the last `keep` points.
// Bars start from zero (so their heights compare) and get half a gap of room at either end of the time axis.
export function timeChart(container, { series, yLabel = "", height = 200, keep = 200, bars = false, fromZero = bars }) {
  styleSheet();
  const xs = [];
  const ys = series.map(() => []);
  const width = () => Math.max(200, container.clientWidth);
  const paths = bars ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined;
  const options = {
    width: width(),
    height,
    legend: { show: series.length > 1, live: false }, // names the series; no "value: —" rows beside them
    axes: [{}, { label: yLabel, size: 60 }],
    // UTC, like the tables.
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
    scales: {
      x: { time: true, range: (u, min, max) => padded(min, max) },
      y: fromZero ? { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] } : {},
    },
    series: [
      {},
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color ?? COLORS[i % COLORS.length],
        fill: bars ? (s.color ?? COLORS[i % COLORS.length]) + "55" : undefined,
        width: 2,
        paths,
        points: { show: true, size: 5 },
        value: (u, v) => (v == null ? "—" : `${v.toLocaleString()}${s.unit ?? ""}`),
      })),
    ],
  };
  // A lone point gets an hour either side (uPlot would guess years); bars get half the smallest gap between points.
  const padded = (min, max) => {
    if (min === max) return [min - 3600, max + 3600];
    if (!bars) return [min, max];
    let gap = max - min;
    for (let i = 1; i < xs.length; i++) gap = Math.min(gap, xs[i] - xs[i - 1] || gap);
    return [min - gap / 2, max + gap / 2];
  };
  const chart = new uPlot(options, [xs, ...ys], container);
  new ResizeObserver(() => chart.setSize({ width: width(), height })).observe(container);
  const redraw = () => chart.setData([xs, ...ys]);
  return {
    chart,
    setData(newXs, newYs) {
      xs.splice(0, xs.length, ...newXs);
      newYs.forEach((values, i) => ys[i].splice(0, ys[i].length, ...values));
      redraw();
    },
    push(x, values) {
      xs.push(x);
      values.forEach((v, i) => ys[i].push(v));
      if (xs.length > keep) {
        xs.shift();
        ys.forEach((values) => values.shift());
      }
      redraw();
    },
  };
}
