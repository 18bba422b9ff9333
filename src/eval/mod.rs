//! Evaluation of unfamiliarity detectors: the threshold-free ranking metrics of the paper
//! (AUROC, AUPR, detection accuracy, FPR at 95% TPR) and the threshold helpers the daemon
//! uses to turn a tolerated false-alarm rate into an alert threshold.

pub mod metrics;
