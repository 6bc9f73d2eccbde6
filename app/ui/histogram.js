// The histogram of token ranks, drawn as SVG. Bins follow a 1-2-5 series, so that GLTR's bucket
// edges (10, 100, 1000) are bin edges and every bar takes its bucket's colour.

import {bucketOf} from "./buckets.js";

const SVG = "http://www.w3.org/2000/svg";
const EDGES = [1, 2, 3, 6, 11, 21, 51, 101, 201, 501, 1001, 2001, 5001, 10001, Infinity];  // bin i: [EDGES[i], EDGES[i+1])
const LABELS = ["1", "2", "3–5", "6–10", "11–20", "21–50", "51–100", "101–200", "201–500", "501–1k", "1k–2k",
  "2k–5k", "5k–10k", ">10k"];
const WIDTH = 420, HEIGHT = 190, LEFT = 8, BOTTOM = 58, TOP = 14;

function element(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Draw the ranks (nulls skipped) into the <svg>; return the one-sentence summary for screen readers. */
export function drawHistogram(svg, ranks) {
  const counts = new Array(EDGES.length - 1).fill(0);
  for (const rank of ranks) {
    if (rank == null) continue;
    counts[EDGES.findIndex((edge, i) => rank >= edge && rank < EDGES[i + 1])] += 1;
  }
  const peak = Math.max(1, ...counts);
  const slot = (WIDTH - LEFT) / counts.length;
  const height = HEIGHT - BOTTOM - TOP;
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  svg.replaceChildren();
  svg.append(element("line", {x1: LEFT, x2: WIDTH, y1: HEIGHT - BOTTOM, y2: HEIGHT - BOTTOM, stroke: "#1a1a1a"}));
  const parts = [];
  counts.forEach((count, i) => {
    const [low, high] = [EDGES[i], EDGES[i + 1]];
    const bar = height * count / peak;
    const x = LEFT + i * slot;
    const group = element("g", {class: "bin", "data-low": low, "data-high": high === Infinity ? "" : high - 1,
                                "data-count": count});
    group.append(element("title", {}, `rank ${LABELS[i]}: ${count} token${count === 1 ? "" : "s"}`));
    group.append(element("rect", {class: `bar b-${bucketOf(low).id}`, x: x + 2, width: slot - 4,
                                  y: HEIGHT - BOTTOM - bar, height: bar}));
    if (count) group.append(element("text", {x: x + slot / 2, y: HEIGHT - BOTTOM - bar - 3, "text-anchor": "middle"},
                                    String(count)));
    const [lx, ly] = [x + slot / 2 + 3, HEIGHT - BOTTOM + 8];
    group.append(element("text", {x: lx, y: ly, "text-anchor": "end", transform: `rotate(-60 ${lx} ${ly})`}, LABELS[i]));
    svg.append(group);
    if (count) parts.push(`${count} at rank ${LABELS[i]}`);
  });
  const total = counts.reduce((a, b) => a + b, 0);
  return total ? `${total} ranked tokens: ${parts.join(", ")}.` : "No token was ranked.";
}
