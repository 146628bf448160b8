"""Reading a finished root back: `validate` checks it, `preview` draws contact sheets of it."""
