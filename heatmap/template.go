package heatmap

// pageHTML is the whole page: inline CSS and SVG, no scripts, no external
// resources. Numbers are formatted in Go; html/template escapes every value.
const pageHTML = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>modproxy · upstream latency heatmap</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2328;background:#fff;margin:0;padding:16px 24px}
h1{font-size:20px;margin:0 0 2px}
h2{font-size:16px;margin:22px 0 6px;padding:4px 8px;background:#eef1f5;border-radius:4px;font-family:ui-monospace,"DejaVu Sans Mono",monospace;word-break:break-all}
h3{font-size:14px;margin:10px 0 2px}
h3 span{font-weight:normal;color:#59636e}
.sub{color:#59636e;margin:0 0 10px}
form{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:0 0 8px}
select,button{font:inherit;padding:2px 6px}
.phases{display:flex;flex-wrap:wrap;column-gap:28px;row-gap:6px}
.row{display:flex;flex-wrap:wrap;gap:18px}
figure{margin:0}
figcaption{font-size:13px;color:#1f2328;display:flex;gap:10px;align-items:center;flex-wrap:wrap}
figcaption b{font-weight:600}
figcaption .scale{font-size:12px;color:#424a53;white-space:nowrap}
figcaption .scale svg{vertical-align:-1px}
figcaption .src{padding:0 6px;border-radius:3px;background:#eef1f5;font-size:12px}
figcaption .src.kernel{background:#e8e2f5}
.note{color:#59636e;font-size:13px;margin:4px 0}
.empty{margin:40px 0;padding:24px;border:1px dashed #c9d1d9;border-radius:6px;color:#59636e;font-size:15px;max-width:760px}
svg text{font:11px system-ui,-apple-system,"DejaVu Sans",sans-serif;fill:#424a53}
svg .axis{fill:#1f2328}
.legend{display:inline-flex;gap:10px;flex-wrap:wrap;font-size:12px;color:#424a53}
footer{margin-top:28px;color:#8c959f;font-size:12px}
</style>
</head>
<body>
<header>
<h1>modproxy · upstream latency heatmap</h1>
<p class="sub">Last {{.WindowName}} in {{.Interval}} columns, generated {{.Generated}}. Each panel: time across, latency up, colour = requests per column and latency bucket (log scale). Hover a cell for its count.{{if .FilterLabel}} Filter: <b>{{.FilterLabel}}</b>.{{end}}</p>
<form method="get" action="">
<label>upstream <select name="upstream">{{range .Upstreams}}<option value="{{.Value}}"{{if .Selected}} selected{{end}}>{{.Label}}</option>{{end}}</select></label>
<label>phase <select name="phase">{{range .Phases}}<option value="{{.Value}}"{{if .Selected}} selected{{end}}>{{.Label}}</option>{{end}}</select></label>
<label>source <select name="source">{{range .Sources}}<option value="{{.Value}}"{{if .Selected}} selected{{end}}>{{.Label}}</option>{{end}}</select></label>
<label>window <select name="window">{{range .Windows}}<option value="{{.Value}}"{{if .Selected}} selected{{end}}>{{.Label}}</option>{{end}}</select></label>
<button type="submit">Show</button>
</form>
</header>
<main>
{{if .EmptyText}}<p class="empty" id="empty">{{.EmptyText}}</p>{{end}}
{{range .Sections}}<section class="upstream" data-upstream="{{.Upstream}}">
<h2>{{.Upstream}}</h2>
<h3>upstream decisions <span>— chosen, skipped, fallthrough, hedged … per column</span></h3>
{{with .Decisions}}{{template "decisions" .}}{{else}}<p class="note">{{.NoDecText}}</p>{{end}}
<div class="phases">{{range .Rows}}<div class="phase" data-phase="{{.Phase}}"><h3>{{.Phase}} <span>— {{.Description}}</span></h3>
<div class="row">{{range .Panels}}{{template "panel" .}}{{end}}</div></div>
{{end}}</div></section>
{{end}}</main>
<footer>{{if .Dropped}}{{.Dropped}} observations dropped (unknown labels, too many upstreams, or older than the window). {{end}}Served by modproxy; no scripts, no external resources.</footer>
</body>
</html>
{{define "decisions"}}<figure>
<figcaption><span class="legend">{{range .Legend}}<span><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" fill="{{.Fill}}"/></svg> {{.Name}} {{.Total}}</span>{{end}}<span><svg width="10" height="10" aria-hidden="true"><rect x="1" y="1" width="8" height="8" fill="none" stroke="#b3261e" stroke-width="1.5"/></svg> on kernel evidence</span></span></figcaption>
<svg class="decisions" xmlns="http://www.w3.org/2000/svg" width="{{.Width}}" height="{{.Height}}" viewBox="0 0 {{.Width}} {{.Height}}" role="img" aria-label="upstream decisions for {{.Upstream}}">
<rect x="{{.PlotX}}" y="{{.PlotY}}" width="{{.PlotW}}" height="{{.PlotH}}" fill="#f6f8fa" stroke="#d0d7de"/>
{{range .XTicks}}<line x1="{{.X}}" x2="{{.X}}" y1="{{$.PlotY}}" y2="{{$.PlotBottom}}" stroke="#e1e4e8"/>{{end}}
<g shape-rendering="crispEdges">{{range .Bars}}<rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="{{.Fill}}" data-decision="{{.Decision}}" data-count="{{.Count}}" data-upstream="{{$.Upstream}}"{{if .Kernel}} data-kernel="1" stroke="#b3261e" stroke-width="1.5"{{end}}><title>{{.Title}}</title></rect>{{end}}</g>
<text x="{{.PlotX}}" y="{{.PlotY}}" dx="-5" dy="9" text-anchor="end">{{.MaxLabel}}</text>
<text x="{{.PlotX}}" y="{{.PlotBottom}}" dx="-5" text-anchor="end">0</text>
{{range .XTicks}}<text x="{{.X}}" y="{{.Y}}" text-anchor="{{.Anchor}}">{{.Label}}</text>{{end}}
</svg>
</figure>{{end}}
{{define "panel"}}<figure class="panel" data-phase="{{.Phase}}" data-source="{{.Source}}">
<figcaption><span class="src {{.Source}}">{{.Source}}</span><span>{{.Summary}}</span>
<span class="scale" title="colour scale: 1 to {{.LegendMax}} requests per cell, logarithmic">1 <svg width="80" height="10" aria-hidden="true">{{range .Legend}}<rect x="{{.X}}" y="0" width="10" height="10" fill="{{.Fill}}"/>{{end}}</svg> {{.LegendMax}} per cell</span></figcaption>
<svg class="heatmap" xmlns="http://www.w3.org/2000/svg" width="{{.Width}}" height="{{.Height}}" viewBox="0 0 {{.Width}} {{.Height}}" role="img" aria-label="{{.Phase}} latency heatmap ({{.Source}}) for {{.Upstream}}">
<rect x="{{.PlotX}}" y="{{.PlotY}}" width="{{.PlotW}}" height="{{.PlotH}}" fill="#f6f8fa" stroke="#d0d7de"/>
{{range .YTicks}}<line x1="{{$.PlotX}}" x2="{{$.PlotRight}}" y1="{{.Y}}" y2="{{.Y}}" stroke="#e1e4e8"/>{{end}}
{{range .XTicks}}<line x1="{{.X}}" x2="{{.X}}" y1="{{$.PlotY}}" y2="{{$.PlotBottom}}" stroke="#e1e4e8"/>{{end}}
<g shape-rendering="crispEdges">{{range .Cells}}<rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="{{.Fill}}" data-count="{{.Count}}" data-phase="{{$.Phase}}" data-source="{{$.Source}}" data-upstream="{{$.Upstream}}"><title>{{.Title}}</title></rect>{{end}}</g>
{{range .YTicks}}<text x="{{.X}}" y="{{.Y}}" dy="4" text-anchor="{{.Anchor}}">{{.Label}}</text>{{end}}
<text class="axis" x="{{.LatLabelX}}" y="{{.LatLabelY}}" text-anchor="middle" transform="rotate(-90 {{.LatLabelX}} {{.LatLabelY}})">latency</text>
{{range .XTicks}}<text x="{{.X}}" y="{{.Y}}" text-anchor="{{.Anchor}}">{{.Label}}</text>{{end}}
<text class="axis" x="{{.TimeLabelX}}" y="{{.TimeLabelY}}" text-anchor="middle">{{.TimeLabel}}</text>
</svg>
</figure>{{end}}
`
