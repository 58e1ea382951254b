"""The synthetic survey: APOGEE-like spectra and JWST twins with a known ground truth.

Book: {ref}`ch-survey`

=================================  =======================================================
:mod:`helpers.survey.params`       every knob (:class:`SurveyParams`) and the version
:mod:`helpers.survey.lines`        interstellar, telluric and sky lines
:mod:`helpers.survey.linephysics`  stellar line physics: element responses line by line
:mod:`helpers.survey.arcturus`     calibrating the line physics on the Arcturus atlas
:mod:`helpers.survey.mismatch`     model mismatch: what no model of the survey explains
:mod:`helpers.survey.spectrum`     one star's spectrum: Cannon flux, element responses,
                                   interstellar, atmospheric and instrumental imprints, noise
:mod:`helpers.survey.chemistry`    the chemical model: field and open-cluster labels
:mod:`helpers.survey.catalogue`    fields, plates, clusters, measured labels, the truth
:mod:`helpers.survey.nirspec`      NIRSpec as the twins see it: grid, detector gap, errors
:mod:`helpers.survey.twins`        the JWST/NIRSpec-like twins (StarCLIP pairs)
:mod:`helpers.survey.generate`     writing a survey: cached, atomic, deterministic
:mod:`helpers.survey.load`         opening a survey (:class:`Survey`, :func:`load_survey`)
:mod:`helpers.survey.imprints`     measuring the imprints against the truth
:mod:`helpers.survey.cli`          ``python -m helpers.survey generate|cache``
=================================  =======================================================
"""
from helpers.survey.generate import generate_survey, is_complete_survey, survey_dir
from helpers.survey.linephysics import load_line_list, reference_pattern
from helpers.survey.lines import sky_lines, telluric_lines, true_dib_windows
from helpers.survey.load import Survey, check_chapter_parameters, load_survey
from helpers.survey.params import GENERATOR_VERSION, SurveyParams, paper_scale_params
from helpers.survey.spectrum import dib_equivalent_width, synthesize_apogee, synthesize_nirspec

__all__ = ["GENERATOR_VERSION", "SurveyParams", "Survey", "generate_survey", "load_survey",
           "survey_dir", "is_complete_survey", "load_line_list", "reference_pattern",
           "true_dib_windows", "telluric_lines", "sky_lines", "synthesize_apogee",
           "synthesize_nirspec", "check_chapter_parameters", "dib_equivalent_width",
           "paper_scale_params"]
