// MathJax 2 (served from assets/mathjax, copied from the jupyter-server-mathjax package at
// build time): typeset what pymdownx.arithmatex marks, \( \) inline and \[ \] displayed,
// with the STIX web fonts that package carries.
window.MathJax = {
  tex2jax: {inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]],
            processEscapes: true, processEnvironments: true},
  "HTML-CSS": {availableFonts: [], webFont: "STIX-Web", imageFont: null},
  TeX: {extensions: ["AMSmath.js", "AMSsymbols.js"]},
  messageStyle: "none",
  skipStartupTypeset: false,
};
