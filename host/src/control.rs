//! Control actions inside one process (core.md §7): the API's `ControlSink` puts actions on
//! a channel; a control thread checks `control.allowed_actions` (as DP3's workers do) and
//! calls the handler registered for the action.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use tracing::{info, warn};

use crate::queue::{ControlAction, ControlSink, SubmitError};

/// Handles one kind of control action.
pub type ControlHandler = Arc<dyn Fn(&ControlAction) + Send + Sync>;

/// The in-process control channel.
pub struct Control {
    tx: Mutex<Option<Sender<ControlAction>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Control {
    /// Start the control thread. `allowed` are the names of `control.allowed_actions`;
    /// `handler` runs every allowed action.
    pub fn start(allowed: Vec<String>, handler: ControlHandler) -> std::io::Result<Control> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("dp3-control".into())
            .spawn(move || run(&rx, &allowed, &handler))?;
        Ok(Control {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stop accepting actions and wait for the running one to finish.
    pub fn stop(&self) {
        drop(self.tx.lock().take());
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

fn run(rx: &Receiver<ControlAction>, allowed: &[String], handler: &ControlHandler) {
    while let Ok(action) = rx.recv() {
        if !allowed.iter().any(|a| a == action.name()) {
            warn!(
                action = action.name(),
                "control action refused: not in control.allowed_actions"
            );
            continue;
        }
        info!(action = ?action, "running control action");
        handler(&action);
    }
}

impl ControlSink for Control {
    fn send(&self, action: ControlAction) -> Result<(), SubmitError> {
        match self.tx.lock().as_ref() {
            Some(tx) => tx.send(action).map_err(|_| SubmitError::ShuttingDown),
            None => Err(SubmitError::ShuttingDown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_actions_reach_the_handler() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let control = Control::start(
            vec!["make_snapshots".into()],
            Arc::new(move |a: &ControlAction| s.lock().push(a.clone())),
        )
        .unwrap();
        control.send(ControlAction::MakeSnapshots).unwrap();
        control
            .send(ControlAction::RefreshModuleConfig { module: "x".into() })
            .unwrap();
        control.stop();
        assert_eq!(*seen.lock(), vec![ControlAction::MakeSnapshots]);
        assert!(control.send(ControlAction::MakeSnapshots).is_err());
    }
}
