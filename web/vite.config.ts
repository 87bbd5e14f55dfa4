// The web console's build: `vite build web` writes dist/web, which osfarmd serves
// (daemon/http/static-files.ts). `npx vite web` serves it for development, with /rpc, /session
// and downloads proxied to a daemon started with --http 127.0.0.1:7480.
import { defineConfig } from 'vite'
import react from '@vitejs/plugin-react'
import { fileURLToPath } from 'node:url'

const daemon = process.env.OSFARM_HTTP ?? 'http://127.0.0.1:7480'

export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  plugins: [react()],
  build: {
    outDir: '../dist/web',
    emptyOutDir: true,
    chunkSizeWarningLimit: 1024
  },
  server: {
    proxy: {
      '/rpc': daemon,
      '/session': daemon,
      '^/images/[^/]+/download': daemon
    }
  }
})
