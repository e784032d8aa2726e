// Zoom, pan, fit and fullscreen of the main graph. The graph is drawn into one <g> (the
// viewport) of an <svg> that fills its pane; its transform (translate, then scale) is kept here,
// per svg, so that a re-render (a click, a label) keeps the view and only a graph of another
// size is fitted again (and a fitted view is refitted when the pane changes size). Wheel: zoom
// around the cursor; drag on the background: pan; the
// buttons: zoom in / out, fit, fullscreen.

const MIN_SCALE = 0.05;
const MAX_SCALE = 8;
const FIT_MAX = 1.5; // fitting never blows a small graph up more than this
const PAD = 8;

const views = new WeakMap(); // svg -> {k, x, y, size, g, fitted}

function view(svg) {
  if (!views.has(svg)) views.set(svg, { k: 1, x: 0, y: 0, size: null, g: null, fitted: false });
  return views.get(svg);
}

function apply(svg) {
  const v = view(svg);
  if (v.g) v.g.setAttribute("transform", `translate(${v.x.toFixed(2)},${v.y.toFixed(2)}) scale(${v.k.toFixed(5)})`);
  svg.dataset.scale = v.k.toFixed(4);
}

function paneSize(svg) {
  const r = svg.getBoundingClientRect();
  return { w: Math.max(1, r.width), h: Math.max(1, r.height) };
}

/** The current scale of `svg`'s view (1 = the layout's own pixels). */
export function scaleOf(svg) {
  return view(svg).k;
}

/** Fit the whole layout into the pane (centred; at most FIT_MAX times its own size). */
export function fit(svg) {
  const v = view(svg);
  if (!v.size) return;
  const { w, h } = paneSize(svg);
  const top = topInset(svg);
  const k = Math.max(MIN_SCALE, Math.min(FIT_MAX, (w - 2 * PAD) / v.size.width, (h - top - 2 * PAD) / v.size.height));
  v.k = k;
  v.x = (w - k * v.size.width) / 2;
  v.y = top + PAD + (h - top - 2 * PAD - k * v.size.height) / 2;
  v.fitted = true; // (a pane that changes size refits a fitted view, see enableZoom)
  apply(svg);
}

// room taken at the top of the pane by the legend and the controls, drawn over the svg
function topInset(svg) {
  const legend = document.getElementById("legend");
  if (!legend || legend.parentElement !== svg.parentElement) return 0;
  return legend.getBoundingClientRect().height;
}

/** Zoom by `factor` around the pane point (px, py) (default: the pane's centre). */
export function zoomBy(svg, factor, px = null, py = null) {
  const v = view(svg);
  const { w, h } = paneSize(svg);
  const cx = px ?? w / 2;
  const cy = py ?? h / 2;
  const k = Math.min(MAX_SCALE, Math.max(MIN_SCALE, v.k * factor));
  v.x = cx - ((cx - v.x) * k) / v.k;
  v.y = cy - ((cy - v.y) * k) / v.k;
  v.k = k;
  v.fitted = false;
  apply(svg);
}

/** Pan so that the layout point (x, y) is at the pane's centre, if it is not in view. */
export function panTo(svg, x, y) {
  const v = view(svg);
  const { w, h } = paneSize(svg);
  const sx = v.x + v.k * x;
  const sy = v.y + v.k * y;
  if (sx >= 20 && sx <= w - 20 && sy >= 20 && sy <= h - 20) return;
  v.x = w / 2 - v.k * x;
  v.y = h / 2 - v.k * y;
  v.fitted = false;
  apply(svg);
}

/**
 * Attach the viewport `g` of a fresh drawing of size {width, height}: keeps the view of an
 * earlier drawing of the same size, fits a new one.
 */
export function attach(svg, g, size) {
  const v = view(svg);
  v.g = g;
  const same = v.size && v.size.width === size.width && v.size.height === size.height;
  v.size = size;
  if (same) apply(svg);
  else fit(svg);
}

/** Wire wheel zoom and drag pan on `svg` (once). */
export function enableZoom(svg) {
  if (svg.dataset.zoomable) return;
  svg.dataset.zoomable = "1";
  svg.addEventListener(
    "wheel",
    (event) => {
      event.preventDefault();
      const r = svg.getBoundingClientRect();
      zoomBy(svg, Math.exp(-event.deltaY * 0.0015), event.clientX - r.left, event.clientY - r.top);
    },
    { passive: false },
  );
  let drag = null;
  svg.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 || event.target.closest(".node")) return;
    const v = view(svg);
    drag = { id: event.pointerId, x: event.clientX, y: event.clientY, vx: v.x, vy: v.y };
    svg.setPointerCapture(event.pointerId);
    svg.classList.add("panning");
  });
  svg.addEventListener("pointermove", (event) => {
    if (!drag || event.pointerId !== drag.id) return;
    const v = view(svg);
    v.x = drag.vx + event.clientX - drag.x;
    v.y = drag.vy + event.clientY - drag.y;
    v.fitted = false;
    apply(svg);
  });
  const end = (event) => {
    if (!drag || event.pointerId !== drag.id) return;
    drag = null;
    svg.classList.remove("panning");
  };
  svg.addEventListener("pointerup", end);
  svg.addEventListener("pointercancel", end);
  // the pane grows or shrinks (window, fullscreen, the subgraph pane folding): a view that was
  // fitted stays fitted; one the user zoomed or panned is left alone
  new ResizeObserver(() => {
    if (view(svg).fitted) fit(svg);
  }).observe(svg);
}

/** Toggle fullscreen of `pane` (the browser's, or a fixed full-window pane where refused). */
export async function toggleFullscreen(pane, svg) {
  if (document.fullscreenElement === pane) {
    await document.exitFullscreen();
  } else if (pane.classList.contains("maximized")) {
    pane.classList.remove("maximized");
  } else {
    try {
      await pane.requestFullscreen();
    } catch {
      pane.classList.add("maximized");
    }
  }
  requestAnimationFrame(() => fit(svg));
}
