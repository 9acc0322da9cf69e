// Injected by bench/web_ui.py before any page script runs (Playwright's add_init_script). The INCL Job page
// is not changed for the benchmark: this wraps the uPlot constructor as the page's vendored script defines it
// and adds a `draw` hook to every chart, which uPlot calls each time it has painted the series on its canvas.
// Each draw is recorded with performance.now() (ms since navigation start) and, when the chart's data arrays
// are new or longer, the y values that became visible in it. Frame gaps (a requestAnimationFrame loop) and the
// Long Tasks API's entries are recorded from the start too.
(() => {
  const bench = (window.__bench = { draws: [], fresh: [], longtasks: [], gaps: [], mouseup: null });
  let wrapped;
  Object.defineProperty(window, "uPlot", {
    configurable: true,
    get() { return wrapped; },
    set(U) {
      wrapped = function (opts, data, target) {
        opts.hooks = opts.hooks || {};
        let arr = null, seen = 0, gen = 0;
        (opts.hooks.draw = opts.hooks.draw || []).push((u) => {
          const t = performance.now();
          const xs = u.data[0], ys = u.data[1];
          if (xs !== arr) { arr = xs; seen = 0; gen += 1; }
          if (ys.length > seen && bench.keepValues) {
            for (let i = seen; i < ys.length; i++) bench.fresh.push([t, ys[i]]);
          }
          seen = ys.length;
          bench.draws.push({ t, n: xs.length, gen, min: u.scales.x.min, max: u.scales.x.max });
        });
        return new U(opts, data, target);
      };
      Object.assign(wrapped, U);
      wrapped.prototype = U.prototype;
    },
  });
  document.addEventListener("mouseup", () => { bench.mouseup = performance.now(); }, true);
  let last = performance.now();
  const loop = (t) => { bench.gaps.push(t - last); last = t; requestAnimationFrame(loop); };
  requestAnimationFrame(loop);
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) bench.longtasks.push([e.startTime, e.duration]);
    }).observe({ type: "longtask", buffered: true });
  } catch (err) { bench.longtaskError = String(err); }
})();
