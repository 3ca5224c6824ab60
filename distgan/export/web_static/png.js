// Grids and PNG files as distgan.runtime makes them: grid() (2 black pixels between tiles) and PNGs whose text
// chunks carry the model's sha256 and the request (tEXt when latin-1, iTXt otherwise, as pillow writes them).

/** uint8 images (each H*W*C, row-major) -> one RGBA ImageData, `columns` tiles a row; a single image as it is. */
export function gridImage(images, height, width, channels, columns, padding = 2) {
  const one = images.length === 1;
  const pad = one ? 0 : padding;
  const cols = one ? 1 : columns;
  const rows = Math.ceil(images.length / cols);
  const outW = cols * (width + pad) + pad;
  const outH = rows * (height + pad) + pad;
  const data = new Uint8ClampedArray(outW * outH * 4);
  for (let i = 3; i < data.length; i += 4) data[i] = 255;
  images.forEach((image, k) => {
    const y0 = pad + Math.floor(k / cols) * (height + pad);
    const x0 = pad + (k % cols) * (width + pad);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const src = (y * width + x) * channels;
        const dst = ((y0 + y) * outW + x0 + x) * 4;
        data[dst] = image[src];
        data[dst + 1] = image[src + (channels === 3 ? 1 : 0)];
        data[dst + 2] = image[src + (channels === 3 ? 2 : 0)];
      }
    }
  });
  return new ImageData(data, outW, outH);
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, body) {
  const out = new Uint8Array(12 + body.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, body.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(body, 8);
  view.setUint32(8 + body.length, crc32(out.subarray(4, 8 + body.length)));
  return out;
}

const isLatin1 = (text) => [...text].every((ch) => ch.codePointAt(0) < 256);

function textChunk(key, value) {
  const k = [...key].map((ch) => ch.codePointAt(0));
  if (isLatin1(value)) return chunk("tEXt", Uint8Array.from([...k, 0, ...[...value].map((ch) => ch.codePointAt(0))]));
  // iTXt: keyword, 0, compression flag 0, method 0, empty language tag and translated keyword, UTF-8 text
  return chunk("iTXt", Uint8Array.from([...k, 0, 0, 0, 0, 0, ...new TextEncoder().encode(value)]));
}

/** The canvas's PNG with `text` (key -> value) as text chunks after IHDR. */
export async function pngWithText(canvas, text) {
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const bytes = new Uint8Array(await blob.arrayBuffer());
  const ihdrEnd = 8 + 12 + new DataView(bytes.buffer).getUint32(8);  // signature, then IHDR's length, type, body, crc
  const parts = [bytes.subarray(0, ihdrEnd), ...Object.entries(text).map(([k, v]) => textChunk(k, v)),
    bytes.subarray(ihdrEnd)];
  return new Blob(parts, { type: "image/png" });
}
