// npm run lint (part of npm test): neostandard (standard style) with TypeScript, over the
// sources; not over what is built (dist/, web/dist/) or installed.
import './scripts/lint/typescript-5.cjs'
import neostandard from 'neostandard'

export default [
  ...neostandard({
    ts: true,
    ignores: ['dist/**', 'web/dist/**', 'node_modules/**', 'test-artifacts/**', '**/*.d.ts']
  }),
  {
    // The house style: several short properties or JSX attributes on one line, `void` to mark a
    // promise left to run.
    rules: {
      '@stylistic/object-property-newline': 'off',
      '@stylistic/jsx-first-prop-new-line': 'off',
      '@stylistic/jsx-closing-bracket-location': 'off',
      '@stylistic/jsx-closing-tag-location': 'off',
      '@stylistic/multiline-ternary': 'off',
      'react/jsx-handler-names': 'off',
      'no-void': 'off'
    }
  },
  {
    // mke2fs.conf text, whose format indents with tabs.
    files: ['daemon/builder/tools/mke2fs.ts'],
    rules: { '@stylistic/no-tabs': 'off' }
  }
]
