// Bundles src/ into dist/: index.html plus hashed assets under dist/assets.
import * as esbuild from 'esbuild';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(root, 'dist');

// noVNC's CommonJS build awaits a WebCodecs probe at module top level, which
// is not valid inside a CommonJS module. Start the probe without awaiting it
// and fill in the exported flag when it resolves (H.264 is then simply off
// for the first frames, which the server never sends anyway).
const novncTopLevelAwait = {
  name: 'novnc-no-top-level-await',
  setup(build) {
    build.onLoad({ filter: /novnc[\\/]lib[\\/]util[\\/]browser\.js$/ }, async (args) => {
      const src = await readFile(args.path, 'utf8');
      const needle = '= await _checkWebCodecsH264DecodeSupport();';
      if (!src.includes(needle)) return undefined;
      const patched = src.replace(
        needle,
        '= false;\n_checkWebCodecsH264DecodeSupport().then(function (v) { exports.supportsWebCodecsH264Decode = supportsWebCodecsH264Decode = v; });',
      );
      return { contents: patched, loader: 'js' };
    });
  },
};

await rm(dist, { recursive: true, force: true });
await mkdir(path.join(dist, 'assets'), { recursive: true });

const result = await esbuild.build({
  absWorkingDir: root,
  entryPoints: ['src/main.tsx'],
  bundle: true,
  splitting: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  sourcemap: false,
  metafile: true,
  outdir: path.join(dist, 'assets'),
  entryNames: '[name]-[hash]',
  chunkNames: '[name]-[hash]',
  assetNames: '[name]-[hash]',
  jsx: 'automatic',
  jsxImportSource: 'preact',
  legalComments: 'linked',
  logLevel: 'warning',
  plugins: [novncTopLevelAwait],
});

let js = '';
let css = '';
for (const [out, meta] of Object.entries(result.metafile.outputs)) {
  if (meta.entryPoint !== 'src/main.tsx') continue;
  js = path.basename(out);
  if (meta.cssBundle) css = path.basename(meta.cssBundle);
}
if (!js) throw new Error('no entry JS in build output');

const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kubevirt-rs console</title>
<link rel="icon" href="data:,">
${css ? `<link rel="stylesheet" href="assets/${css}">` : ''}
<script type="module" src="assets/${js}"></script>
</head>
<body>
<div id="app"></div>
<noscript>This console needs JavaScript.</noscript>
</body>
</html>
`;
await writeFile(path.join(dist, 'index.html'), html);
let total = 0;
for (const [out, meta] of Object.entries(result.metafile.outputs)) total += meta.bytes;
console.log(`dist: index.html, ${js}${css ? ', ' + css : ''}; ${Object.keys(result.metafile.outputs).length} assets, ${(total / 1024).toFixed(0)} KiB`);
