// Small helpers shared by the page's sections: building elements and writing numbers and tokens.

/** An element with attributes ("class" sets className) and children (nodes or strings). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

export const fixed = (x, digits = 2) => (x == null ? "n/a" : x.toFixed(digits));
export const percent = (p) => (p > 0 && p < 0.001 ? "< 0.1 %" : `${(100 * p).toFixed(1)} %`);

/** A token's text with its invisible characters shown (for the side panels). */
export function visible(token) {
  if (token.startsWith("bytes:")) return `${token.slice(6)} (part of a character)`;
  return token.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
}
