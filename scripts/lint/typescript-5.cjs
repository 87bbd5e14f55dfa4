// typescript-eslint needs TypeScript's JS API, which TypeScript 7 (the compiler this project
// builds with) no longer has. In the lint process alone, every require('typescript') gets
// TypeScript 5 (the typescript-5 dev dependency); the build is not touched.
const Module = require('node:module')
const target = require.resolve('typescript-5')
const resolve = Module._resolveFilename
Module._resolveFilename = function (request, ...rest) {
  return resolve.call(this, request === 'typescript' ? target : request, ...rest)
}
