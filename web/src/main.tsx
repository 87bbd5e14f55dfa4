// The osfarm web console: Mantine components, wouter routes, one client for osfarmd (rpc.ts).
import '@mantine/core/styles.css'
import { StrictMode } from 'react'
import { createRoot } from 'react-dom/client'
import { MantineProvider, createTheme } from '@mantine/core'
import { App } from './app.tsx'

const theme = createTheme({ primaryColor: 'teal', defaultRadius: 'sm', fontFamilyMonospace: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace' })

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <MantineProvider theme={theme} defaultColorScheme='light'>
      <App />
    </MantineProvider>
  </StrictMode>
)
